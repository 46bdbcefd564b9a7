"""Loading models and tokenizers from a local directory or a hub id, safely.

No remote code is ever run and only safetensors weights are read (pickled
`.bin` checkpoints can execute code when loaded).
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from finetrace.errors import FinetraceError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What transformers raises for a missing, unreachable, unreadable or corrupt model.
LOAD_ERRORS = (OSError, ValueError, KeyError, SafetensorError, json.JSONDecodeError)


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise FinetraceError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (a directory or a hub id)."""
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False)
    except LOAD_ERRORS as error:
        raise FinetraceError(f"cannot load a tokenizer from {name_or_path}: {_first_line(error)}") from None


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the tokenizer's own, else EOS (padding is masked either way)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def load_model(
    name_or_path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A causal LM in eval mode on `device`."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
    except LOAD_ERRORS as error:
        raise FinetraceError(f"cannot load a model from {name_or_path}: {_first_line(error)}") from None
    return model.to(device).eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
