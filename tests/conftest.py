import json
import os
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

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: one thread each
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random two-layer Llama with a small BPE tokenizer, saved like any HF model."""
    return save_random_llama(tmp_path_factory.mktemp("tiny-model"), tiny_tokenizer)


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


def save_random_llama(out: Path, tokenizer, hidden_size: int = 32, seed: int = 0) -> Path:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_finetuned(tiny_model, tmp_path_factory) -> Path:
    """`tiny_model` after a few full fine-tuning steps."""
    from finetrace import FinetuneConfig, TrainConfig, finetune

    data = tmp_path_factory.mktemp("ft-data") / "data.txt"
    data.write_text("\n".join(TEXTS[:4]) + "\n")
    out = tmp_path_factory.mktemp("tiny-finetuned")
    training = TrainConfig(steps=10, learning_rate=3e-3, batch_size=4, context_length=64)
    finetune(tiny_model, data, out, FinetuneConfig(training=training), overwrite=True)
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `make test`, one worker builds the tiny zoo (minutes on one core) while the other
    runs what needs no zoo (with --no-loadscope-reorder, xdist keeps this order): one zoo file
    first, the slow files next, the zoo's other files last.
    The sort is stable, so each file's tests keep their order."""
    zoo = {item.path for item in items if item.get_closest_marker("zoo")}
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    first = next((item.path for item in items if item.path in zoo), None)
    items.sort(key=lambda item: 0 if item.path == first else 3 if item.path in zoo else 1 if item.path in slow else 2)
