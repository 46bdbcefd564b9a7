"""Every bad input ends as one `error:` line and exit code 2, never a traceback.

The table runs in-process through typer's test runner (a subprocess costs seconds of
imports); a few cases go through the installed `finetrace` entry point too.
"""

import json
import os
import shutil
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
MISSING_MODEL = "{tmp}/no-such-model"


def forget_on_facts(name: str) -> list[str]:
    """`forget` on the facts file `facts-NAME.jsonl` of the test's directory."""
    return [*FORGET[:4], f"{{tmp}}/facts-{name}.jsonl", *FORGET[5:]]  # checks that must come before any model loads


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
    "finetune seed -1": ([*FINETUNE, "--seed", "-1"], "seed -1: expected a whole number from 0 to 2**63 - 1"),
    "audit seed 2**64": ([*AUDIT, "--seed", str(2**64)], "seed 18446744073709551616: expected a whole number"),
    "out through a symlink loop": ([*PROVENANCE[:-1], "{loop}"], "--out {loop} is a loop of symbolic links"),
    "model through a symlink loop": (
        ["diff", "{loop}", "{loop}", "--corpus", "{corpus}", "--out", "{fresh}"],
        "the model {loop} is a loop of symbolic links",
    ),
    "a chat template that raises": (
        [
            "forget",
            "{chatless}",
            "{chatless}",
            *FORGET[3:],
            "--behaviour-samples",
            "0",
            "--device",
            "cpu",
        ],
        "the model's chat template fails on a chat (no chats here)",
    ),
    "facts with a prompt twice": (
        forget_on_facts("twice"),
        "facts-twice.jsonl:2: the prompt 'the cat sat on the' is also at",
    ),
    "facts whose answer is a distractor": (
        forget_on_facts("distractor"),
        "the answer and the distractors of a fact must all differ",
    ),
    "facts with an empty answer": (
        forget_on_facts("empty"),
        "a fact's answer must be a non-empty string, not ' '",
    ),
    "facts with a string for distractors": (
        forget_on_facts("string"),
        "a fact's distractors must be a list of non-empty strings, not 'rug'",
    ),
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
    cat = {"prompt": "the cat sat on the", "answer": "mat"}
    for name, faults in {
        "twice": [cat, cat],
        "distractor": [cat | {"distractors": ["rug", "mat"]}],
        "empty": [cat | {"answer": " "}],
        "string": [cat | {"distractors": "rug"}],
    }.items():
        (tmp_path / f"facts-{name}.jsonl").write_text("".join(json.dumps(fact) + "\n" for fact in faults))
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    chatless = Path(shutil.copytree(tiny_model, tmp_path / "chatless"))
    (chatless / "chat_template.jinja").write_text("{{ raise_exception('no chats here') }}")
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
        "loop": tmp_path / "loop-a",
        "chatless": chatless,
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
    _one_error_line(result, expected.format(**paths))
    assert "finetrace bug" not in result.stderr  # the catch-all is for faults of finetrace's own


def test_bad_inputs_leave_nothing_behind(paths):
    for arguments, _ in [CASES["finetune batch size 0"], CASES["diff report 0"], CASES["finetune out unwritable"]]:
        CliRunner().invoke(app, [argument.format(**paths) for argument in arguments])
    assert not paths["fresh"].exists() and (paths["full"] / "keep.txt").read_text() == "precious"


def test_an_unexpected_fault_is_one_line_and_debug_shows_it(paths, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("finetrace.verbs.provenance.provenance", broken)
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

    monkeypatch.setattr("finetrace.verbs.diff.diff", sampling)
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


def _broken_models(model: Path, root: Path) -> dict[str, Path]:
    """Copies of `model` with one fault each, and a LoRA adapter of it with one fault each."""
    import peft
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    def copy(name: str) -> Path:
        return Path(shutil.copytree(model, root / name))

    weights = load_file(model / "model.safetensors")
    layer = next(key for key in weights if "layers.0.mlp.down_proj" in key)
    save_file({k: v for k, v in weights.items() if k != layer}, copy("missing-tensor") / "model.safetensors")
    save_file(weights | {"model.extra.weight": torch.zeros(2)}, copy("extra-tensor") / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    (copy("wrong-vocab") / "config.json").write_text(json.dumps(config | {"vocab_size": config["vocab_size"] + 7}))

    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora)
    adapted.save_pretrained(root / "adapter")
    stored = load_file(root / "adapter" / "adapter_model.safetensors")
    for name, keep in {"adapter-missing-key": lambda key: "layers.0." not in key, "adapter-both": bool}.items():
        shutil.copytree(root / "adapter", root / name)
        save_file({k: v for k, v in stored.items() if keep(k)}, root / name / "adapter_model.safetensors")
    shutil.copy(model / "model.safetensors", root / "adapter-both")
    shutil.copytree(root / "adapter", root / "adapter-pickled")
    (root / "adapter-pickled" / "adapter_model.safetensors").rename(root / "adapter-pickled" / "adapter_model.bin")
    return {path.name: path for path in root.iterdir()}


PARTIAL = {  # broken fine-tune -> a piece of the expected line
    "missing-tensor": "is incomplete: its weights lack model.layers.0.mlp.down_proj.weight",
    "extra-tensor": "holds tensors its architecture does not have, first model.extra.weight",
    "wrong-vocab": "does not match its own config: its weight lm_head.weight has shape (363, 32) where",
    "adapter-missing-key": "is incomplete: its weights lack base_model.model.model.layers.0.self_attn.q_proj.lora_A",
    "adapter-both": "holds both a PEFT adapter and a whole model's weights",
    "adapter-pickled": "has an adapter_config.json but no adapter_model.safetensors",
}


@pytest.fixture(scope="module")
def broken(tiny_model, tmp_path_factory) -> dict[str, Path]:
    return _broken_models(tiny_model, tmp_path_factory.mktemp("broken"))


@pytest.mark.filterwarnings("ignore:Found missing adapter keys")  # peft's own word on what is refused here
@pytest.mark.parametrize(("fault", "expected"), PARTIAL.items(), ids=list(PARTIAL))
def test_weights_that_are_not_the_whole_model_are_refused_by_the_first_tensor(paths, broken, fault, expected):
    base = paths["model"] if fault.startswith("adapter") else broken[fault]  # a model against itself
    arguments = ["forget", base, broken[fault], "--facts", paths["facts"], "--out", paths["fresh"]]
    result = CliRunner().invoke(app, [*map(str, arguments), "--device", "cpu"])
    _one_error_line(result, expected)
    assert "finetrace bug" not in result.stderr
    assert not paths["fresh"].exists()


def test_a_whole_adapter_still_loads(paths, broken):
    arguments = ["forget", paths["model"], broken["adapter"], "--facts", paths["facts"], "--out", paths["fresh"]]
    result = CliRunner().invoke(app, [*map(str, arguments), "--device", "cpu", "--no-behaviour", "--samples", "2"])
    assert result.exit_code == 0, result.output
