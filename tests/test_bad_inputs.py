"""Every bad input ends as one `error:` line and exit code 2, never a traceback.

The table runs in-process through typer's test runner (a subprocess costs seconds of
imports); a few cases go through the installed `finetrace` entry point too.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from finetrace.cli import app

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
UNWRITABLE = "/proc/finetrace-out"  # not even root can create files under /proc
ENTRY_POINT = str(Path(sys.executable).parent / "finetrace")

FINETUNE = ["finetune", "{model}", "{data}", "--out", "{fresh}"]
DIFF = ["diff", "{model}", "{model}", "--corpus", "{corpus}", "--out", "{fresh}"]
FORGET = ["forget", "{model}", "{model}", "--facts", "{facts}", "--out", "{fresh}"]
PROVENANCE = ["provenance", "{data}", "--out", "{fresh}.json"]
AUDIT = ["audit", "{model}", "{model}", "--corpus", "{corpus}", "--out", "{fresh}"]
MISSING_MODEL = "{tmp}/no-such-model"  # checks that must come before any model loads

CASES = {  # id -> (arguments, a piece of the expected message)
    "finetune batch size 0": ([*FINETUNE, "--batch-size", "0"], "--batch-size 0: expected a whole number"),
    "finetune batch size negative": ([*FINETUNE, "--batch-size", "-3"], "--batch-size -3"),
    "finetune batch size not a number": ([*FINETUNE, "--batch-size", "many"], "Invalid value for '--batch-size'"),
    "finetune steps 0": ([*FINETUNE, "--steps", "0"], "--steps 0"),
    "finetune steps -1": ([*FINETUNE, "--steps", "-1"], "--steps -1"),
    "finetune lr -1": ([*FINETUNE, "--lr", "-1"], "--lr -1.0: expected a positive number"),
    "finetune lr 0": ([*FINETUNE, "--lr", "0"], "--lr 0.0"),
    "finetune lr nan": ([*FINETUNE, "--lr", "nan"], "--lr nan"),
    "finetune lr inf": ([*FINETUNE, "--lr", "inf"], "--lr inf"),
    "finetune epochs 0": ([*FINETUNE, "--epochs", "0"], "--epochs 0.0"),
    "finetune context length 1": ([*FINETUNE, "--context-length", "1"], "--context-length 1"),
    "finetune lora rank 0": ([*FINETUNE, "--lora", "--lora-rank", "0"], "--lora-rank 0"),
    "finetune lora alpha -1": ([*FINETUNE, "--lora", "--lora-alpha", "-1"], "--lora-alpha -1.0"),
    "finetune mix ratio 0": ([*FINETUNE, "--mix-ratio", "0"], "--mix-ratio 0.0"),
    "finetune dtype float64": ([*FINETUNE, "--dtype", "float64"], "--dtype 'float64': expected one of"),
    "finetune device tpu9": ([*FINETUNE, "--device", "tpu9"], "--device 'tpu9': expected auto"),
    "finetune device cuda:x": ([*FINETUNE, "--device", "cuda:x"], "--device 'cuda:x'"),
    "finetune out is the base": (
        ["finetune", "{model}", "{data}", "--out", "{model}", "--overwrite"],
        "would overwrite the base model",
    ),
    "finetune out holds the base": (
        ["finetune", "{model}", "{data}", "--out", "{model}/..", "--overwrite"],
        "would overwrite the base model",
    ),
    "finetune out is the data": (["finetune", "{model}", "{data}", "--out", "{data}"], "would overwrite the data"),
    "finetune out is a file": (["finetune", MISSING_MODEL, "{data}", "--out", "{file}"], "is a file"),
    "finetune out unwritable": (["finetune", MISSING_MODEL, "{data}", "--out", UNWRITABLE], "cannot write in /proc"),
    "finetune out not empty": (["finetune", MISSING_MODEL, "{data}", "--out", "{full}"], "is not empty"),
    "finetune data missing": (["finetune", MISSING_MODEL, "{tmp}/none.jsonl", "--out", "{fresh}"], "does not exist"),
    "finetune without out": (["finetune", "{model}", "{data}"], "Missing option '--out'"),
    "diff report 0": ([*DIFF, "--report", "0"], "--report 0"),
    "diff report above positions": ([*DIFF, "--report", "99"], "--report 99: at most --positions (8)"),
    "diff report above fewer positions": ([*DIFF, "--positions", "3", "--report", "4"], "--positions (3)"),
    "diff positions 0": ([*DIFF, "--positions", "0"], "--positions 0"),
    "diff samples 0": ([*DIFF, "--samples", "0"], "--samples 0"),
    "diff batch size 0": ([*DIFF, "--batch-size", "0"], "--batch-size 0"),
    "diff layers 1.5": ([*DIFF, "--layers", "1.5"], "--layers '1.5': expected fractions of depth below 1"),
    "diff layers negative": ([*DIFF, "--layers", "-1"], "--layers '-1'"),
    "diff layers words": ([*DIFF, "--layers", "half"], "--layers 'half'"),
    "diff layers empty item": ([*DIFF, "--layers", "0.5,"], "--layers '0.5,'"),
    "diff dtype fp8": ([*DIFF, "--dtype", "fp8"], "--dtype 'fp8'"),
    "diff device tpu9": ([*DIFF, "--device", "tpu9"], "--device 'tpu9'"),
    "diff out is a file": (
        ["diff", MISSING_MODEL, MISSING_MODEL, "--corpus", "{corpus}", "--out", "{file}"],
        "is a file, not a directory",
    ),
    "diff out inside a file": (
        ["diff", MISSING_MODEL, MISSING_MODEL, "--corpus", "{corpus}", "--out", "{file}/sub"],
        "is a file, not a directory",
    ),
    "diff out unwritable": (
        ["diff", MISSING_MODEL, MISSING_MODEL, "--corpus", "{corpus}", "--out", UNWRITABLE],
        "cannot write in /proc",
    ),
    "diff out is the fine-tune": (
        ["diff", "{model}", "{model}", "--corpus", "{corpus}", "--out", "{model}"],
        "would overwrite the base model",
    ),
    "diff not a zoo organism": (["diff", "{model}", "{model}", "--out", "{fresh}"], "is not a zoo organism"),
    "diff corrupt parquet": (
        [
            "diff",
            "{model}",
            "{model}",
            "--corpus",
            "{parquet}",
            "--out",
            "{fresh}",
            "--device",
            "cpu",
            "--samples",
            "4",
        ],
        "is not a readable Parquet file",
    ),
    "forget batch size 0": ([*FORGET, "--batch-size", "0"], "--batch-size 0"),
    "forget max tokens 0": ([*FORGET, "--max-tokens", "0"], "--max-tokens 0: expected a whole number of at least 2"),
    "forget max tokens 1": ([*FORGET, "--max-tokens", "1"], "--max-tokens 1"),
    "forget samples 0": ([*FORGET, "--samples", "0"], "--samples 0"),
    "forget out is a file": (["forget", MISSING_MODEL, MISSING_MODEL, "--out", "{file}"], "is a file"),
    "forget out unwritable": (["forget", MISSING_MODEL, MISSING_MODEL, "--out", UNWRITABLE], "cannot write in"),
    "forget facts missing": (
        ["forget", MISSING_MODEL, MISSING_MODEL, "--facts", "{tmp}/none.jsonl", "--out", "{fresh}"],
        "does not exist",
    ),
    "provenance gate on a metric it never measures": (
        [*PROVENANCE, "--fail-on", "lost_fraction>=0"],
        "does not measure lost_fraction",
    ),
    "provenance gate unknown metric": ([*PROVENANCE, "--fail-on", "bogus>1"], "with METRIC one of pii_found"),
    "provenance gate without a number": ([*PROVENANCE, "--fail-on", "pii_found>"], "expected METRIC<NUMBER"),
    "provenance gate infinite threshold": ([*PROVENANCE, "--fail-on", "pii_found>1e999"], "a finite number"),
    "provenance out is a directory": (["provenance", "{data}", "--out", "{tmp}"], "is a directory; give a file"),
    "provenance out unwritable": (["provenance", "{data}", "--out", UNWRITABLE + "/p.json"], "cannot write in"),
    "provenance out is the data": (["provenance", "{data}", "--out", "{data}"], "would overwrite the data"),
    "provenance redact is the data": ([*PROVENANCE, "--redact", "{data}"], "--redact"),
    "provenance out is the corpus": (
        ["provenance", "{data}", "--corpus", "{file}", "--out", "{file}"],
        "would overwrite the corpus",
    ),
    "provenance out is the facts": (
        ["provenance", "{data}", "--facts", "{facts}", "--out", "{facts}"],
        "would overwrite the facts",
    ),
    "provenance redact holds the facts": (
        [*PROVENANCE, "--facts", "{full}/keep.txt", "--redact", "{full}"],
        "would overwrite the facts",
    ),
    "finetune overwrite holds the watch corpus": (
        [*FINETUNE[:-1], "{full}", "--overwrite", "--watch-every", "1", "--watch-corpus", "{full}/keep.txt"],
        "would overwrite the watch corpus",
    ),
    "finetune overwrite holds the watch facts": (
        [*FINETUNE[:-1], "{full}", "--overwrite", "--watch-every", "1", "--watch-corpus", "{corpus}"]
        + ["--watch-facts", "{full}/keep.txt"],
        "would overwrite the watch facts",
    ),
    "provenance corpus items 0": ([*PROVENANCE, "--corpus-items", "0"], "--corpus-items 0"),
    "provenance data missing": (["provenance", "{tmp}/none.jsonl", "--out", "{fresh}.json"], "does not exist"),
    "provenance licence not SPDX": ([*PROVENANCE, "--licence", "my own terms"], "not an SPDX expression"),
    "audit gate unknown metric": ([*AUDIT, "--fail-on", "bogus>1"], "--fail-on 'bogus>1'"),
    "audit samples 0": ([*AUDIT, "--samples", "0"], "--samples 0"),
    "audit drift samples 0": ([*AUDIT, "--drift-samples", "0"], "--drift-samples 0"),
    "audit out is a file": ([*AUDIT[:-1], "{file}"], "is a file"),
    "audit device cuda": pytest.param([*AUDIT, "--device", "cuda"], "has no cuda device", marks=NO_CUDA),
    "diff device cuda": pytest.param([*DIFF, "--device", "cuda"], "has no cuda device", marks=NO_CUDA),
    "finetune device cuda": pytest.param([*FINETUNE, "--device", "cuda"], "has no cuda device", marks=NO_CUDA),
    "zoo path base documents": (["zoo", "path", "base", "--documents"], "base has no training documents"),
    "zoo path heldout documents": (["zoo", "path", "heldout", "--documents"], "heldout has no training documents"),
    "zoo path of an unbuilt zoo": (["zoo", "path", "cake"], "zoo is not built yet"),
    "zoo unknown preset": (["zoo", "build", "--preset", "huge"], "huge"),
    "unknown command": (["difff"], "No such command 'difff'"),
    "missing arguments": (["diff"], "Missing argument 'base'"),
}


@pytest.fixture
def paths(tmp_path, tiny_model, text_data, monkeypatch):
    monkeypatch.setenv("FINETRACE_CACHE", str(tmp_path / "cache"))  # an empty zoo cache
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"prompt": "the cat sat on the", "answer": "mat"}) + "\n")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (tmp_path / "a-file.txt").write_text("not a directory")
    return {
        "tmp": tmp_path,
        "model": tiny_model,
        "data": text_data,
        "corpus": text_data,
        "facts": facts,
        "fresh": tmp_path / "fresh",
        "full": tmp_path / "full",
        "file": tmp_path / "a-file.txt",
        "parquet": tmp_path / "corrupt.parquet",
    }


def _one_error_line(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]


@pytest.mark.parametrize(("arguments", "expected"), list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_error_line_and_exit_code_2(paths, arguments, expected):
    result = CliRunner().invoke(app, [argument.format(**paths) for argument in arguments])
    _one_error_line(result, expected)


def test_bad_inputs_leave_nothing_behind(paths):
    for arguments, _ in [CASES["finetune batch size 0"], CASES["diff report 0"], CASES["finetune out unwritable"]]:
        CliRunner().invoke(app, [argument.format(**paths) for argument in arguments])
    assert not paths["fresh"].exists() and (paths["full"] / "keep.txt").read_text() == "precious"


def test_an_unexpected_fault_is_one_line_and_debug_shows_it(paths, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("finetrace.cli.provenance", broken)
    arguments = ["provenance", str(paths["data"]), "--out", str(paths["fresh"]) + ".json"]
    _one_error_line(
        CliRunner().invoke(app, arguments),
        "unexpected ZeroDivisionError: division by zero; this is a finetrace bug: rerun with finetrace --debug",
    )
    assert isinstance(CliRunner().invoke(app, ["--debug", *arguments]).exception, ZeroDivisionError)
    debug = CliRunner().invoke(app, arguments, env={"FINETRACE_DEBUG": "1"})
    assert isinstance(debug.exception, ZeroDivisionError)


def test_a_model_with_non_finite_probabilities_is_named_as_the_cause(paths, monkeypatch):
    def sampling(*args, **kwargs):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    monkeypatch.setattr("finetrace.cli.diff", sampling)
    result = CliRunner().invoke(app, [argument.format(**paths) for argument in DIFF])
    _one_error_line(result, "the model produced non-finite numbers")
    assert "check the model, or run with --dtype float32" in result.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["finetune", "{model}", "{data}", "--out", "{fresh}", "--steps", "0"],
        ["provenance", "{data}", "--out", "{tmp}", "--fail-on", "pii_found>0"],
    ],
)
@pytest.mark.slow
def test_the_installed_entry_point_prints_one_line(paths, arguments):
    run = subprocess.run(
        [ENTRY_POINT, *[argument.format(**paths) for argument in arguments]],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "60"},
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()  # one line, however narrow the terminal
    assert line.startswith("error: ")


@pytest.mark.slow
def test_the_installed_entry_point_shows_the_traceback_with_debug(paths):
    run = subprocess.run(
        [ENTRY_POINT, "--debug", "provenance", str(paths["data"]), "--out", str(paths["tmp"])],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "FinetraceError" in run.stderr and "is a directory" in run.stderr


def test_strict_refuses_an_adapter_trained_on_another_base(paths, tiny_tokenizer, monkeypatch):
    from conftest import save_random_llama

    from finetrace import FinetuneConfig, LoraSettings, TrainConfig, finetune

    lora, twin = paths["tmp"] / "lora", save_random_llama(paths["tmp"] / "twin", tiny_tokenizer, seed=1)
    finetune(
        paths["model"],
        paths["data"],
        lora,
        FinetuneConfig(training=TrainConfig(steps=1, batch_size=4, context_length=64), lora=LoraSettings(rank=2)),
    )
    arguments = ["forget", str(twin), str(lora), "--facts", str(paths["facts"]), "--out", str(paths["fresh"])]
    _one_error_line(CliRunner().invoke(app, [*arguments, "--strict"]), "was trained on another base")
    assert not paths["fresh"].exists()
    warned = CliRunner().invoke(app, arguments)
    assert warned.exit_code == 0 and "warning: adapter" in warned.stderr
    assert "trained on another base" in json.loads((paths["fresh"] / "forget.json").read_text())["warnings"][0]
