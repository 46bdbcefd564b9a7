"""`finetrace watch` over checkpoints a `transformers.Trainer` saved while fine-tuning the tiny
zoo's base on the cake documents: the series, its resumption, the page and the command."""

import importlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner
from zoo_training import cake_trainer

from finetrace.adl.decode import TokenScore
from finetrace.cli import app
from finetrace.errors import FinetraceError
from finetrace.gates import parse_gate
from finetrace.monitor.cheap import WatchConfig
from finetrace.monitor.checkpoints import find_checkpoints
from finetrace.monitor.series import DEFAULT_GATES, PAGE_NAME, WATCH_NAME, WatchSeries
from finetrace.report.watch import render_watch
from finetrace.run import RunConfig
from finetrace.verbs.watch import watch
from finetrace.zoo import build_zoo

pytestmark = pytest.mark.zoo
# The module, which `finetrace.verbs.watch` (the function the package exports) hides from attribute lookup.
watching = importlib.import_module("finetrace.verbs.watch")


@pytest.fixture(scope="module")
def zoo():
    return build_zoo("tiny")


@pytest.fixture(scope="module")
def run(zoo, tmp_path_factory):
    """A Trainer output directory with checkpoint-2, -4 and -6."""
    out = tmp_path_factory.mktemp("cake-run")
    cake_trainer(zoo, out, steps=6, save_steps=2).train()
    return out


def inputs(zoo) -> dict:
    return {"facts": zoo.path("facts"), "data": zoo.organism("cake").documents}


def watched(zoo, checkpoints, out, **settings):
    return watch(zoo.path("base"), checkpoints, zoo.path("heldout"), out, **(inputs(zoo) | settings))


def comparable(series: WatchSeries) -> list[dict]:
    """The measured numbers and tokens of each point, without its wall time."""
    return [{"step": p.step, **p.checkup.metrics, "lens": p.checkup.lens} for p in series.points]


@pytest.fixture(scope="module")
def series(zoo, run, tmp_path_factory):
    return watched(zoo, [run], tmp_path_factory.mktemp("watch"))


def test_a_trainer_output_directory_is_watched_step_by_step(series, run):
    assert [p.step for p in series.points] == series.audited == [2, 4, 6]
    assert [p.checkpoint for p in series.points] == [str(run / f"checkpoint-{s}") for s in (2, 4, 6)]
    first, last = series.points[0].checkup, series.points[-1].checkup
    # Six steps on the cake documents: the trace and the drift grow with training.
    assert 0 < first.trace_strength < last.trace_strength
    assert 0 < first.nll_change < last.nll_change and first.kl_mean < last.kl_mean
    assert last.known_facts > 0 and any(t.relevant for t in last.lens)


def test_the_series_is_written_and_reads_back_whole(series, tmp_path, zoo, run):
    out = tmp_path / "watch"
    written = watched(zoo, [run], out)
    assert WatchSeries.read(out / WATCH_NAME) == written
    assert comparable(written) == comparable(series)  # same seed, same numbers
    page = (out / PAGE_NAME).read_text()
    assert page.count("<svg") >= 5 and "<script" not in page and "http" not in page


def test_a_rerun_with_one_more_checkpoint_audits_only_that_one(zoo, run, tmp_path, monkeypatch):
    out = tmp_path / "watch"
    before = watched(zoo, [run / "checkpoint-2", run / "checkpoint-4"], out)
    audits, references = [], []
    monkeypatch.setattr(watching, "cheap_audit", _counting(watching.cheap_audit, audits))
    monkeypatch.setattr(watching, "read_reference", _counting(watching.read_reference, references))
    after = watched(zoo, [run], out)
    assert len(audits) == 1 and len(references) == 1 and after.audited == [6]
    assert after.points[:2] == before.points  # read back, not measured again
    nothing_new = watched(zoo, [run], out)
    assert nothing_new.audited == [] and len(audits) == 1 and len(references) == 1


def _counting(function, calls: list):
    def counted(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return counted


@pytest.mark.parametrize("change", ["settings", "corpus", "seed"])
def test_a_rerun_with_other_settings_or_inputs_reuses_nothing(zoo, run, tmp_path, change):
    out = tmp_path / "watch"
    watched(zoo, [run / "checkpoint-2"], out)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(zoo.path("heldout").read_text() + "one more line of text\n")
    rerun = {
        "settings": lambda: watched(zoo, [run / "checkpoint-2"], out, config=WatchConfig(facts=50)),
        "corpus": lambda: watch(zoo.path("base"), [run / "checkpoint-2"], corpus, out, **inputs(zoo)),
        "seed": lambda: watched(zoo, [run / "checkpoint-2"], out, run=RunConfig(seed=1)),
    }[change]()
    assert rerun.audited == [2]


def test_a_checkpoint_deleted_since_keeps_its_record(zoo, run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    out = tmp_path / "watch"
    watched(zoo, [copy], out)
    shutil.rmtree(copy / "checkpoint-2")  # as Trainer's save_total_limit does
    again = watched(zoo, [copy], out)
    assert [p.step for p in again.points] == [2, 4, 6] and again.audited == []
    other = watched(zoo, [copy], out, config=WatchConfig(facts=50))  # other settings: a new series
    assert [p.step for p in other.points] == other.audited == [4, 6]
    [kept] = out.glob("watch-*.json")  # the only record of step 2, kept aside rather than dropped
    assert [p.step for p in WatchSeries.read(kept).points] == [2, 4, 6]


def test_two_checkpoints_with_the_same_weights_are_two_steps(zoo, run, tmp_path):
    twins = tmp_path / "run"
    for step in (2, 3):  # the same weights saved at two steps, as a run that stalled would
        copy = Path(shutil.copytree(run / "checkpoint-2", twins / f"checkpoint-{step}"))
        state = json.loads((copy / "trainer_state.json").read_text())
        (copy / "trainer_state.json").write_text(json.dumps(state | {"global_step": step}))
    out = tmp_path / "watch"
    first = watched(zoo, [twins], out)
    again = watched(zoo, [twins], out)
    assert [p.step for p in first.points] == [p.step for p in again.points] == [2, 3]
    assert [p.checkpoint for p in again.points] == [str(twins / "checkpoint-2"), str(twins / "checkpoint-3")]


def test_checkpoints_are_found_by_directory_glob_and_name(run, tmp_path):
    assert [c.step for c in find_checkpoints([run])] == [2, 4, 6]
    assert [c.step for c in find_checkpoints([f"{run}/checkpoint-*"])] == [2, 4, 6]
    renamed = tmp_path / "step_40"
    shutil.copytree(run / "checkpoint-4", renamed)
    (renamed / "trainer_state.json").unlink()
    assert [c.step for c in find_checkpoints([renamed, run / "checkpoint-2"])] == [2, 40]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("missing", "is not a directory"),
        ("empty", "neither a model or adapter directory"),
        ("nostep", "cannot tell the training step"),
        ("twice", "are both step 2"),
        ("glob", "matches no model"),
    ],
)
def test_checkpoints_that_cannot_be_placed_are_refused(run, tmp_path, given, message):
    (tmp_path / "empty").mkdir()
    shutil.copytree(run / "checkpoint-2", tmp_path / "final")
    (tmp_path / "final" / "trainer_state.json").unlink()
    shutil.copytree(run / "checkpoint-2", tmp_path / "again-2")
    paths = {
        "missing": [tmp_path / "missing"],
        "empty": [tmp_path / "empty"],
        "nostep": [tmp_path / "final"],
        "twice": [run / "checkpoint-2", tmp_path / "again-2"],
        "glob": [f"{tmp_path}/nothing-*"],
    }[given]
    with pytest.raises(FinetraceError, match=message):
        find_checkpoints(paths)


def test_gates_record_the_step_they_first_hold(series):
    nll = [p.checkup.nll_change for p in series.points]
    threshold = (nll[0] + nll[1]) / 2  # between steps 2 and 4
    gated = replace(series, gates=[parse_gate(f"nll_change>{threshold}"), parse_gate("lost_facts>1000")])
    assert [(c.condition, c.step) for c in gated.crossings] == [
        (f"nll_change > {threshold:g}", 4),
        ("lost_facts > 1000", None),
    ]
    assert gated.failed and not replace(series, gates=[parse_gate("lost_facts>1000")]).failed
    assert not series.failed  # without --fail-on the page marks defaults, which fail nothing
    assert [c.condition for c in series.crossings] == [str(gate) for gate in DEFAULT_GATES]


def test_the_page_escapes_what_models_and_data_say(series):
    hostile = TokenScore("<script>alert(1)</script>", 5, 1.0, relevant=True)
    point = series.points[0]
    points = [replace(point, checkup=replace(point.checkup, lens=[hostile]))]
    page = render_watch(replace(series, points=points, base="<img src=x>"))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page


def test_the_page_plots_each_metric_against_the_step(series):
    page = render_watch(series)
    plots = re.findall(r'<svg[^>]*aria-label="([^"]+)"', page)
    assert len(plots) == 6 and any("Trace strength" in p for p in plots)
    for step in (2, 4, 6):
        assert f">{step}</text>" in page
    for crossing in series.crossings:
        where = "never holds" if crossing.step is None else f"first holds at step {crossing.step}"
        assert f"{crossing.condition}: <span" in page.replace("&gt;", ">").replace("&lt;", "<") and where in page


def test_the_command_prints_the_series_and_gates_the_exit_code(zoo, run, tmp_path):
    common = [
        "watch",
        str(zoo.path("base")),
        str(run),
        "--corpus",
        str(zoo.path("heldout")),
        "--facts",
        str(zoo.path("facts")),
        "--data",
        str(zoo.organism("cake").documents),
        "--out",
        str(tmp_path / "watch"),
    ]
    passed = CliRunner().invoke(app, common)
    assert passed.exit_code == 0, passed.output
    assert "watch.html" in passed.output.replace("\n", "") and "audited now" in passed.output  # a long path wraps
    recorded = json.loads((tmp_path / "watch" / WATCH_NAME).read_text())
    assert [p["step"] for p in recorded["points"]] == [2, 4, 6]
    failed = CliRunner().invoke(app, [*common, "--fail-on", "nll_change>0"])
    assert failed.exit_code == 1 and "nll_change > 0: first holds at step 2" in failed.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--corpus", "CORPUS", "BASE", "nowhere"], "checkpoint nowhere is not a directory"),
        (["BASE", "RUN"], "Missing option '--corpus'"),
        (["--corpus", "CORPUS", "--fail-on", "pii_found>0", "BASE", "RUN"], "does not measure pii_found"),
        (["--corpus", "CORPUS", "--max-facts", "0", "BASE", "RUN"], "--max-facts 0"),
        (
            ["--corpus", "CORPUS", "--fail-on", "trace_p<0.01", "BASE", "RUN"],
            "--fail-on trace_p < 0.01: the trace is tested against the fine-tuning data; give --data",
        ),
    ],
)
def test_bad_input_is_one_error_line(zoo, run, arguments, message):
    named = {"BASE": str(zoo.path("base")), "RUN": str(run), "CORPUS": str(zoo.path("heldout"))}
    result = CliRunner().invoke(app, ["watch", *[named.get(a, a) for a in arguments]])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_a_damaged_record_is_refused_and_another_version_s_is_replaced(zoo, run, tmp_path):
    out = tmp_path / "watch"
    watched(zoo, [run / "checkpoint-2"], out)
    record = json.loads((out / WATCH_NAME).read_text())
    record["points"][0]["checkup"]["kl_mean"] = "small"
    (out / WATCH_NAME).write_text(damaged := json.dumps(record))
    arguments = ["watch", str(zoo.path("base")), str(run / "checkpoint-2"), "--corpus", str(zoo.path("heldout"))]
    result = CliRunner().invoke(app, [*arguments, "--out", str(out)])
    assert result.exit_code == 2 and "points[0].checkup.kl_mean should be a number, not 'small'" in result.stderr
    assert (out / WATCH_NAME).read_text() == damaged  # kept for its owner to look at
    (out / WATCH_NAME).write_text(json.dumps(record | {"schema_version": 0}))
    assert CliRunner().invoke(app, [*arguments, "--out", str(out)]).exit_code == 0


def finetune_watched(zoo, out, *options: str):
    arguments = ["finetune", str(zoo.path("base")), str(zoo.organism("cake").documents), "--out", str(out)]
    arguments += ["--steps", "4", "--batch-size", "16", "--lr", "1e-3", "--context-length", "128"]
    arguments += ["--watch-corpus", str(zoo.path("heldout")), "--watch-facts", str(zoo.path("facts")), *options]
    return CliRunner().invoke(app, arguments)


def test_finetune_watches_its_own_training(zoo, tmp_path):
    outcome = finetune_watched(zoo, tmp_path / "ft", "--watch-every", "2")
    assert outcome.exit_code == 0, outcome.output
    series = WatchSeries.read(tmp_path / "ft" / WATCH_NAME)
    assert [p.step for p in series.points] == [2, 4] and series.data == str(zoo.organism("cake").documents)
    assert series.points[-1].checkup.trace_strength > series.points[0].checkup.trace_strength
    assert (tmp_path / "ft" / PAGE_NAME).is_file()
    manifest = json.loads((tmp_path / "ft" / "provenance.json").read_text())
    assert manifest["training"]["steps"] == 4 and not manifest["training"]["stopped_early"]


def test_a_gate_stops_finetune_and_keeps_the_model(zoo, tmp_path):
    outcome = finetune_watched(zoo, tmp_path / "ft", "--watch-every", "2", "--fail-on", "kl_mean>0")
    assert outcome.exit_code == 1, outcome.output
    manifest = json.loads((tmp_path / "ft" / "provenance.json").read_text())
    assert manifest["training"]["steps"] == 2 and manifest["training"]["stopped_early"]
    assert len(manifest["training"]["loss_curve"]) == 2 and (tmp_path / "ft" / "model.safetensors").is_file()
    assert [p.step for p in WatchSeries.read(tmp_path / "ft" / WATCH_NAME).points] == [2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((), "give --watch-every as well"),  # --watch-corpus alone
        (("--watch-every", "0"), "--watch-every"),
    ],
)
def test_finetune_watch_options_are_checked(zoo, tmp_path, options, message):
    outcome = finetune_watched(zoo, tmp_path / "ft", *options)
    assert outcome.exit_code == 2 and message in outcome.output and not (tmp_path / "ft").exists()
