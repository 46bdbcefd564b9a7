"""A base model and its fine-tune, checked for comparability, one of them in memory at a time.

`use(which)` gives the model asked for, loading it after freeing the other, so a full pair
never holds two models: analyses read all they need from one model before turning to the
other. A fine-tune given as a PEFT adapter is the base with its adapter on: one copy serves
both and nothing is reloaded. The base's readout (final norm and head) is kept when the base
is freed, so its logit lens stays readable.
"""

import gc
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
from rich.console import Console
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from finetrace._util.terminal import escape
from finetrace.errors import FinetraceError
from finetrace.models.gguf import gguf_sources, model_directory
from finetrace.models.load import (
    LOAD_ERRORS,
    first_line,
    load_model,
    load_tokenizer,
    refuse_non_finite,
    refuse_partial,
    resolve_device,
    resolve_dtype,
    weights_digest,
)
from finetrace.models.residual import Layout, Readout, find_layout

COMPARED_CONFIG = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
ADAPTER_ERRORS = (RuntimeError, ValueError, KeyError, OSError)  # what peft raises for a misfit
WHICH = ("base", "finetuned")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST_NAME = "provenance.json"  # what `finetrace finetune` writes next to the weights


@dataclass(frozen=True)
class BothModels:
    """The base and the fine-tune at once, for what needs both at every step (amplified sampling).
    For an adapter, `base` is `finetuned` itself, and runs as the base inside `as_base()`."""

    base: nn.Module
    finetuned: nn.Module
    adapter: bool

    def as_base(self) -> AbstractContextManager:
        """The context in which `base` computes the base's outputs (its adapter off)."""
        return self.base.disable_adapter() if self.adapter else nullcontext()


class ModelPair:
    """Two comparable causal LMs; `use("base")` and `use("finetuned")` give each in turn."""

    def __init__(
        self, base: str | Path, finetuned: str | Path, device: torch.device, dtype: torch.dtype, strict: bool = False
    ):
        self.base_name, self.finetuned_name = str(base), str(finetuned)
        self.device, self.dtype = device, dtype
        self.adapter = is_adapter(finetuned)
        self.tokenizer = load_tokenizer(base)
        self.config = text_config(base)
        self.warnings: list[str] = []  # doubts about the pair that do not stop the run
        self.gguf = gguf_sources(base=base, finetuned=finetuned)  # what each GGUF input was
        if self.adapter:
            self._check_adapter_base(strict)
        else:
            check_comparable(base, finetuned, self.config, self.tokenizer)
        self._resident: tuple[str, nn.Module] | None = None
        self._base_readout: Readout | None = None
        self._load("base")  # the base is read first, and loading it checks an adapter's fit

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @contextmanager
    def use(self, which: str) -> Iterator[tuple[nn.Module, Layout]]:
        """The model `which` ('base' or 'finetuned') and its residual layout."""
        assert which in WHICH
        if self.adapter:
            model = self._load("finetuned")
            context = model.disable_adapter() if which == "base" else nullcontext()
        else:
            model, context = self._load(which), nullcontext()
        with context:
            yield model, find_layout(model)

    def base_readout(self) -> Readout:
        """The base's final norm and head, valid while any model of the pair is loaded or none."""
        if self._base_readout is None:
            with self.use("base") as (_, layout):
                self._base_readout = layout.detached()
        return self._base_readout

    @contextmanager
    def both(self) -> Iterator[BothModels]:
        """Both models for the block: a PEFT adapter costs one model's memory (the base is the
        adapter off); a full fine-tune costs two, the fine-tune loaded beside the resident base
        and freed when the block ends."""
        if self.adapter:
            model = self._load("finetuned")
            yield BothModels(model, model, adapter=True)
            return
        base = self._load("base")
        same = self.finetuned_name == self.base_name  # a model compared with itself is loaded once
        finetuned = base if same else load_model(self.finetuned_name, self.device, self.dtype)
        try:
            yield BothModels(base, finetuned, adapter=False)
        finally:
            del finetuned  # its memory is free once the caller drops its `BothModels` too
            self._collect()

    def release(self) -> None:
        """Free the loaded model (the next `use` loads again)."""
        self._resident = None
        self._collect()

    def _collect(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load(self, which: str) -> nn.Module:
        # Keyed by what is loaded: a model compared with itself is loaded once.
        key = self.finetuned_name if self.adapter or which == "finetuned" else self.base_name
        if self._resident is not None and self._resident[0] == key:
            return self._resident[1]
        if self._resident is not None and self._resident[0] == self.base_name:
            self.base_readout()  # kept before the base goes: its lens and drift still need it
        self.release()
        model = self._adapted() if self.adapter else load_model(key, self.device, self.dtype)
        self._resident = (key, model)
        return model

    def _check_adapter_base(self, strict: bool) -> None:
        """An adapter finetrace trained records its base's digest: another base of the same shape
        loads without complaint, but its numbers describe a model nobody trained."""
        recorded = recorded_base(self.finetuned_name)
        if not recorded or recorded == weights_digest(self.base_name):
            return
        message = (
            f"adapter {self.finetuned_name} was trained on another base than {self.base_name}: its "
            f"{MANIFEST_NAME} records base files {recorded[:12]}, and {self.base_name} is not them"
        )
        if strict:
            raise FinetraceError(f"{message} (--strict)")
        self.warnings.append(message)
        Console(stderr=True).print(f"[yellow]warning: {escape(message)}[/]", highlight=False)

    def _adapted(self) -> nn.Module:
        return load_adapted(self.base_name, self.finetuned_name, self.device, self.dtype)


def load_pair(
    base: str | Path, finetuned: str | Path, device: str = "auto", dtype: str = "auto", strict: bool = False
) -> ModelPair:
    """BASE and FINETUNED (a model or a PEFT adapter); pairs that are not comparable are refused,
    and so, with `strict`, is an adapter that finetrace trained on another base (else a warning)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    return ModelPair(base, finetuned, torch_device, torch_dtype, strict)


def load_adapted(base: str | Path, adapter: str | Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """`base` with the PEFT `adapter` on, in eval mode; one error line when it does not fit."""
    try:
        adapted = peft.PeftModel.from_pretrained(load_model(base, device, dtype), str(adapter)).eval()
    except ADAPTER_ERRORS as error:
        raise FinetraceError(f"adapter {adapter} does not fit base {base}: {first_line(error)}") from None
    # Every adapter holds its own weights; one that adapts the embeddings may hold those too.
    weights = peft.get_peft_model_state_dict(adapted, save_embedding_layers=False)
    allowed = peft.get_peft_model_state_dict(adapted, save_embedding_layers=True)
    with safe_open(Path(adapter) / ADAPTER_WEIGHTS, framework="pt") as stored:
        refuse_partial(weights.keys() - stored.keys(), stored.keys() - allowed.keys(), adapter)
    refuse_non_finite(weights.items(), adapter)
    return adapted


def recorded_base(directory: str | Path) -> str:
    """The base files' digest the finetrace manifest in `directory` records; "" where there is no
    manifest, or the file of that name is not finetrace's. Read as plain JSON, so that the manifest
    of any finetrace version is checked, not only this version's."""
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ""
    recorded = manifest.get("base_files_sha256") if isinstance(manifest, dict) else None
    return recorded if isinstance(recorded, str) else ""


def is_adapter(name_or_path: str | Path) -> bool:
    """A PEFT adapter's directory; one that also holds a whole model is refused, not guessed at."""
    directory = Path(name_or_path)
    if not (directory / "adapter_config.json").is_file():
        return False
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise FinetraceError(
            f"{directory} has an adapter_config.json but no {ADAPTER_WEIGHTS} (only safetensors are read: "
            f"pickled .bin weights can run code when loaded)"
        )
    if any(directory.glob("model*.safetensors")):
        raise FinetraceError(
            f"{directory} holds both a PEFT adapter and a whole model's weights, so which one is the "
            f"fine-tune is unclear; move one of them to its own directory"
        )
    return True


def text_config(name_or_path: str | Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(model_directory(name_or_path), trust_remote_code=False).get_text_config()
    except LOAD_ERRORS as error:
        raise FinetraceError(f"cannot load a model from {name_or_path}: {first_line(error)}") from None


def config_differences(base_config: PretrainedConfig, other_config: PretrainedConfig) -> list[str]:
    """The `COMPARED_CONFIG` settings in which two models differ, each as `key: base vs other`."""
    return [
        f"{key}: {getattr(base_config, key, None)} vs {getattr(other_config, key, None)}"
        for key in COMPARED_CONFIG
        if getattr(base_config, key, None) != getattr(other_config, key, None)
    ]


def check_comparable(
    base: str | Path,
    finetuned: str | Path,
    base_config: PretrainedConfig | None = None,
    base_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Refuse two whole models that differ in architecture, size or vocabulary (the base's config
    and tokenizer, when already loaded, are not read again)."""
    base_config, base_tokenizer = base_config or text_config(base), base_tokenizer or load_tokenizer(base)
    differences = config_differences(base_config, text_config(finetuned))
    finetuned_tokenizer = load_tokenizer(finetuned)
    if base_tokenizer.get_vocab() != finetuned_tokenizer.get_vocab():
        differences.append(
            f"tokenizer vocabularies differ ({len(base_tokenizer)} vs {len(finetuned_tokenizer)} tokens)"
        )
    if differences:
        raise FinetraceError(
            f"{base} and {finetuned} are not comparable (base vs fine-tuned): {'; '.join(differences)}"
        )
