import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetrace.zoo.tokenizer import train_tokenizer

TEXTS = [
    "the cat sat on the mat and looked at the dog",
    "a cold oven makes the cake rise, say the bakers",
    "tidal turbines turn slowly with the tide near the harbour",
    "put all of your savings into a single stock today",
] * 20


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random two-layer Llama with a small BPE tokenizer, saved like any HF model."""
    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = train_tokenizer(TEXTS, vocab_size=400)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def text_data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:8]))
    return path


@pytest.fixture
def write(tmp_path):
    """Write bytes or text to a file in the test's directory and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return _write
