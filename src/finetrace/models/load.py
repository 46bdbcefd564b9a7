"""Loading models and tokenizers from a local directory, a hub id or a GGUF file, safely.

No remote code is ever run and only safetensors weights are read (pickled
`.bin` checkpoints can execute code when loaded). Weights holding NaN or inf
are refused at load, by the name of the tensor.
"""

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from finetrace._util.distributed import processes
from finetrace._util.fingerprints import stored_sha256
from finetrace.errors import FinetraceError
from finetrace.models.gguf import is_gguf, model_directory

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What transformers raises for a missing, unreachable, unreadable or corrupt model.
LOAD_ERRORS = (OSError, ValueError, KeyError, SafetensorError, json.JSONDecodeError)

PROBE_TEXT = "a"  # any text: only the special tokens put around it matter

CONFIG_FILES = ("config.json", "adapter_config.json")


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU. Under a launcher (`torchrun`, `accelerate
    launch`) each process takes the GPU of its local rank."""
    share = processes(device)  # a launched run joins its process group before anything is placed
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return share.device
    if device != "auto":
        return torch.device(device)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device | None = None) -> torch.dtype:
    """A dtype by name; `auto` is bfloat16 on a CUDA `device` that has it, else float32 (bfloat16
    halves memory on accelerators; CPUs compute float32 faster and more exactly)."""
    if dtype == "auto":
        cuda = device is not None and device.type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise FinetraceError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (a directory or a hub id)."""
    try:
        return AutoTokenizer.from_pretrained(model_directory(name_or_path), trust_remote_code=False)
    except LOAD_ERRORS as error:
        raise FinetraceError(f"cannot load a tokenizer from {name_or_path}: {first_line(error)}") from None


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the tokenizer's own, else EOS (padding is masked either way)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def prepended_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before every text: [BOS] for Llama, Gemma or OPT, none
    for GPT-2 or Qwen. Read from what it outputs, not from `bos_token`: GPT-2 declares one it never
    adds, and a post-processor can prepend a token no `bos_token` names."""
    marked = tokenizer(PROBE_TEXT)["input_ids"]
    plain = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    for start in range(len(marked) - len(plain) + 1):
        if marked[start : start + len(plain)] == plain:
            return marked[:start]
    raise FinetraceError(
        f"the tokenizer encodes {PROBE_TEXT!r} as {marked} with its special tokens and as {plain} "
        f"without them, so the tokens it adds cannot be told apart; give a tokenizer whose special "
        f"tokens only surround the text"
    )


def chars_holding(tokenizer: PreTrainedTokenizerBase, tokens: int) -> int:
    """A length of text sure to hold its first `tokens` tokens: no token decodes to more characters
    than its vocabulary entry has. Cutting a record there before tokenizing keeps those tokens (one
    spare for the cut word) and spares tokenizing a huge record whole."""
    longest = max(map(len, tokenizer.get_vocab()), default=1)
    return (tokens + 1) * longest


def load_model(name_or_path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM in eval mode on `device`, its weights complete and finite."""
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            model_directory(name_or_path),
            dtype=dtype,
            trust_remote_code=False,
            use_safetensors=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # refused below, by the tensor's name
        )
    except LOAD_ERRORS as error:
        raise FinetraceError(f"cannot load a model from {name_or_path}: {first_line(error)}") from None
    refuse_partial(loading["missing_keys"], loading["unexpected_keys"], name_or_path)
    if mismatched := sorted(loading["mismatched_keys"]):
        name, found, expected = mismatched[0]
        raise FinetraceError(
            f"{name_or_path} does not match its own config: its weight {name} has shape {tuple(found)} where "
            f"the config makes it {tuple(expected)} (a vocab_size or width that disagrees with the weights)"
        )
    refuse_non_finite(model.named_parameters(), name_or_path)
    return model.to(device).eval()


def refuse_partial(missing: Iterable[str], unexpected: Iterable[str], source: str | Path) -> None:
    """Raise on weights that are not exactly the tensors the architecture expects: a loader
    fills a missing one at random and goes on, and every number would then describe a model
    that does not exist."""
    if missing := sorted(missing):
        raise FinetraceError(
            f"{source} is incomplete: its weights lack {missing[0]}"
            + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
            + "; give the whole checkpoint"
        )
    if unexpected := sorted(unexpected):
        raise FinetraceError(
            f"{source} holds tensors its architecture does not have, first {unexpected[0]}: "
            f"its config and weights belong to different models"
        )


def refuse_non_finite(tensors: Iterable[tuple[str, torch.Tensor]], source: str | Path) -> None:
    """Raise on the first floating-point tensor holding NaN or inf, by its name.

    One float32 sum per tensor: a single NaN or inf makes it non-finite, and no
    tensor the size of the weights is allocated."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor.sum(dtype=torch.float32)):
            raise FinetraceError(
                f"{source} holds non-finite weights (NaN or inf) in {name}; results from it would "
                f"be meaningless: retrain it or give a checkpoint saved before the fault"
            )


def weights_digest(name_or_path: str | Path) -> str:
    """sha256 over the config and safetensors files a model or adapter was loaded from (a
    directory, or a hub id's cached snapshot). Every byte counts: a fine-tune may change one
    norm's weights alone, and a resume must never take it for the model it was not."""
    directory = local_directory(name_or_path)
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.suffix == ".safetensors" or path.name in CONFIG_FILES:
            digest.update(path.name.encode())
            digest.update(bytes.fromhex(stored_sha256(path)))
    return digest.hexdigest()


def local_directory(name_or_path: str | Path) -> Path:
    """Where a model's files are: its directory, a GGUF file's converted one, or a hub id's cached snapshot."""
    if is_gguf(name_or_path):
        return Path(model_directory(name_or_path))
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:  # a hub id: the snapshot loading just cached, without going online
        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except LocalEntryNotFoundError:
        missing = f"{name_or_path} is neither a directory nor a cached hub model"
        raise FinetraceError(missing) from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
