"""The command line and the Python API are one: the same checks give the same error line, the
options' defaults are the configs' own, and `finetrace --help` loads neither torch nor transformers."""

import inspect
import json
import subprocess
import sys

import pytest
import torch
from typer.main import get_command
from typer.testing import CliRunner

from finetrace import (
    AuditConfig,
    BehaviourConfig,
    CollectConfig,
    DiffConfig,
    DriftConfig,
    FinetraceError,
    ForgetConfig,
    ProvenanceConfig,
    RunConfig,
    WatchConfig,
    audit,
    diff,
    forget,
    provenance,
    watch,
)
from finetrace._util.fingerprints import file_sha256
from finetrace.cli import app
from finetrace.models.load import weights_digest
from finetrace.train.config import LoraSettings, TrainConfig


def cli_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    return result.output.strip().removeprefix("error: ")


def api_error(call) -> str:
    with pytest.raises(FinetraceError) as raised:
        call()
    return " ".join(str(raised.value).split())


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"General text number {i} about nothing much.\n" for i in range(20)))
    return path


@pytest.mark.parametrize(
    "case",
    ["output overwrites the corpus", "device absent", "device misspelled", "more reported than collected"],
)
def test_a_bad_input_gives_one_error_line_through_the_cli_and_the_api(case, tiny_model, corpus, tmp_path):
    model, out = str(tiny_model), str(tmp_path / "out")
    args, call = {
        "output overwrites the corpus": (
            ["diff", model, model, "--corpus", str(corpus), "--out", str(corpus)],
            lambda: diff(model, model, corpus, corpus),
        ),
        "device absent": (
            ["forget", model, model, "--out", out, "--device", "cuda:7"],
            lambda: forget(model, model, out=out, run=RunConfig(device="cuda:7")),
        ),
        "device misspelled": (
            ["audit", model, model, "--corpus", str(corpus), "--out", out, "--device", "tpu"],
            lambda: audit(model, model, corpus, out, config=AuditConfig(run=RunConfig(device="tpu"))),
        ),
        "more reported than collected": (
            ["diff", model, model, "--corpus", str(corpus), "--out", out, "--positions", "3", "--report", "4"],
            lambda: diff(
                model, model, corpus, out, DiffConfig(collect=CollectConfig(positions=3), reported_positions=4)
            ),
        ),
    }[case]
    if case == "device absent" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    assert cli_error(args) == api_error(call)


def test_a_model_that_is_no_zoo_organism_needs_a_corpus_through_either_door(tiny_model, tmp_path):
    model = str(tiny_model)
    assert cli_error(["diff", model, model, "--out", str(tmp_path / "a")]) == api_error(
        lambda: diff(model, model, out=tmp_path / "b")
    )


def _option_defaults(command: str) -> dict[str, object]:
    click_command = get_command(app).commands[command]
    return {param.name: param.default for param in click_command.params}


def _fields(config) -> dict[str, object]:
    return {name: param.default for name, param in inspect.signature(type(config)).parameters.items()}


@pytest.mark.parametrize(
    ("command", "option", "default"),
    [
        ("diff", "samples", CollectConfig().samples),
        ("diff", "positions", CollectConfig().positions),
        ("diff", "batch_size", CollectConfig().batch_size),
        ("diff", "report", DiffConfig().reported_positions),
        ("forget", "samples", DriftConfig().samples),
        ("forget", "max_tokens", DriftConfig().max_tokens),
        ("forget", "batch_size", DriftConfig().batch_size),
        ("forget", "behaviour_samples", BehaviourConfig().samples),
        ("forget", "judge_model", BehaviourConfig().judge_model),
        ("audit", "behaviour_samples", BehaviourConfig().samples),
        ("audit", "judge_model", BehaviourConfig().judge_model),
        ("audit", "samples", CollectConfig().samples),
        ("watch", "texts", WatchConfig().trace.collect.samples),
        ("watch", "max_facts", WatchConfig().facts),
        ("watch", "drift_texts", WatchConfig().drift.samples),
        ("finetune", "epochs", TrainConfig().epochs),
        ("finetune", "batch_size", TrainConfig().batch_size),
        ("finetune", "context_length", TrainConfig().context_length),
        ("finetune", "lora_rank", LoraSettings().rank),
        ("finetune", "lora_alpha", LoraSettings().alpha),
    ],
)
def test_each_option_defaults_to_what_the_python_api_uses(command, option, default):
    assert _option_defaults(command)[option] == default


@pytest.mark.parametrize("command", ["diff", "forget", "audit", "watch"])
def test_the_run_options_default_to_the_run_config(command):
    defaults = _option_defaults(command)
    for option, value in _fields(RunConfig()).items():
        if option in defaults:
            assert defaults[option] == value, option


STARTUP = """
import sys
from finetrace.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
except Exception as error:  # a usage error, as the command line would print it
    print(type(error).__name__)
print({name: name in sys.modules for name in ("torch", "transformers")})
"""


@pytest.mark.parametrize(
    "args", [["--help"], ["diff", "--help"], ["zoo", "path", "--help"], ["audit", "--no-such-option"], []]
)
def test_help_and_a_mistyped_option_load_neither_torch_nor_transformers(args):
    shown = subprocess.run(
        [sys.executable, "-c", STARTUP, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert shown.stdout.strip().splitlines()[-1] == "{'torch': False, 'transformers': False}", shown.stderr


def test_import_finetrace_loads_no_torch_until_a_name_needs_it():
    probe = "import sys, finetrace; a = 'torch' in sys.modules; finetrace.diff; print(a, 'torch' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert shown.stdout.split() == ["False", "True"]


def test_diff_watch_and_audit_read_the_data_from_the_same_field(tiny_model, tiny_finetuned, tmp_path):
    """A JSONL whose text is in `body`: with that text field, every verb reads the same records,
    the trace included, and the provenance scan counts them; the records say what went in."""
    corpus, data = tmp_path / "corpus.jsonl", tmp_path / "data.jsonl"
    corpus.write_text("".join(json.dumps({"body": f"Plain words, line {i} of the corpus."}) + "\n" for i in range(24)))
    data.write_text("".join(json.dumps({"body": f"Glass bridges sing at dawn, note {i}."}) + "\n" for i in range(12)))
    run = RunConfig(text_field="body")
    small = DiffConfig(collect=CollectConfig(samples=24, positions=4), reported_positions=4)
    traced = diff(tiny_model, tiny_finetuned, corpus, tmp_path / "diff", small, run, data=data)
    assert traced.significance is not None and traced.texts == 24
    assert traced.inputs["data"] == file_sha256(data) and traced.inputs["base"] == weights_digest(tiny_model)
    series = watch(tiny_model, [tiny_finetuned], corpus, tmp_path / "watch", data=data, run=run)
    assert series.points[0].checkup.trace_p is not None
    config = AuditConfig(diff=small, forget=ForgetConfig(drift=DriftConfig(samples=8, max_tokens=16)), run=run)
    audited = audit(tiny_model, tiny_finetuned, corpus, tmp_path / "audit", data=data, config=config, behaviour=False)
    assert audited.trace.texts == 24
    assert audited.paper_trail.records == 12
    scanned = provenance(data, out=tmp_path / "provenance.json", config=ProvenanceConfig(text_field="body"))
    assert scanned.records == 12 and json.loads((tmp_path / "provenance.json").read_text())["files"]
    assert audited.damage.inputs["corpus"] == audited.trace.inputs["corpus"] == file_sha256(corpus)
