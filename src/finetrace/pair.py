"""A base model and its fine-tune, loaded and checked for comparability.

A fine-tune given as a PEFT adapter is applied to the one copy of the base:
with the adapter disabled it *is* the base, so memory holds one model.
"""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace.errors import FinetraceError
from finetrace.models import (load_model, load_tokenizer, refuse_non_finite, resolve_device,
                              resolve_dtype)
from finetrace.residual import Layout, find_layout

COMPARED_CONFIG = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
ADAPTER_ERRORS = (RuntimeError, ValueError, KeyError, OSError)  # what peft raises for a misfit


@dataclass
class ModelPair:
    """Two comparable causal LMs; `use("base")` and `use("finetuned")` give each in turn."""

    base_name: str
    finetuned_name: str
    tokenizer: PreTrainedTokenizerBase
    base_model: nn.Module | None  # None when the fine-tune is an adapter over the same weights
    finetuned_model: nn.Module
    device: torch.device

    @property
    def adapter(self) -> bool:
        return self.base_model is None

    @contextmanager
    def use(self, which: str) -> Iterator[tuple[nn.Module, Layout]]:
        """The model `which` ('base' or 'finetuned') and its residual layout."""
        assert which in ("base", "finetuned")
        if which == "finetuned" or not self.adapter:
            model = self.finetuned_model if which == "finetuned" else self.base_model
            context = nullcontext()
        else:
            model, context = self.finetuned_model, self.finetuned_model.disable_adapter()
        with context:
            yield model, find_layout(model)

    @property
    def n_layers(self) -> int:
        return find_layout(self.finetuned_model).n_layers


def load_pair(base: str | Path, finetuned: str | Path, device: str = "auto", dtype: str = "auto") -> ModelPair:
    """Load BASE and FINETUNED (a model or a PEFT adapter); refuse pairs that are not comparable."""
    torch_device = resolve_device(device)
    torch_dtype = _auto_dtype(torch_device) if dtype == "auto" else resolve_dtype(dtype)
    tokenizer = load_tokenizer(base)
    base_model = load_model(base, torch_device, torch_dtype)
    if is_adapter(finetuned):
        try:
            adapted = peft.PeftModel.from_pretrained(base_model, str(finetuned)).eval()
        except ADAPTER_ERRORS as error:
            raise FinetraceError(
                f"adapter {finetuned} does not fit base {base}: {str(error).strip().splitlines()[0]}"
            ) from None
        refuse_non_finite(peft.get_peft_model_state_dict(adapted).items(), finetuned)
        return ModelPair(str(base), str(finetuned), tokenizer, None, adapted, torch_device)
    finetuned_model = load_model(finetuned, torch_device, torch_dtype)
    _check_comparable(base, finetuned, base_model, finetuned_model, tokenizer, load_tokenizer(finetuned))
    return ModelPair(str(base), str(finetuned), tokenizer, base_model, finetuned_model, torch_device)


def is_adapter(name_or_path: str | Path) -> bool:
    return (Path(name_or_path) / "adapter_config.json").is_file()


def _auto_dtype(device: torch.device) -> torch.dtype:
    # bfloat16 halves memory on accelerators; CPUs compute float32 faster and more exactly.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _check_comparable(base, finetuned, base_model, finetuned_model, base_tok, finetuned_tok) -> None:
    differences = [
        f"{key}: {getattr(base_model.config, key, None)} vs {getattr(finetuned_model.config, key, None)}"
        for key in COMPARED_CONFIG
        if getattr(base_model.config, key, None) != getattr(finetuned_model.config, key, None)
    ]
    if base_tok.get_vocab() != finetuned_tok.get_vocab():
        differences.append(f"tokenizer vocabularies differ ({len(base_tok)} vs {len(finetuned_tok)} tokens)")
    if differences:
        raise FinetraceError(
            f"{base} and {finetuned} are not comparable (base vs fine-tuned): {'; '.join(differences)}"
        )
