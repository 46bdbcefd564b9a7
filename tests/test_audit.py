"""`finetrace audit` on the tiny zoo: the report, the summary, the model card, the gates."""

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import weakref
from dataclasses import replace

import pytest
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from finetrace.adl.collect import CollectConfig
from finetrace.adl.records import DiffConfig
from finetrace.adl.score import ScoreConfig
from finetrace.adl.steer import SteerConfig
from finetrace.cli import app
from finetrace.errors import FinetraceError
from finetrace.evals.drift import DriftConfig
from finetrace.evals.records import ForgetConfig
from finetrace.gates import parse_gate
from finetrace.models import pair
from finetrace.papertrail.scan import PiiExample
from finetrace.report.html import render_report
from finetrace.report.words import verdict
from finetrace.results import AuditResult
from finetrace.spectra.intruders import SpectraConfig
from finetrace.verbs.audit import AuditConfig, audit
from finetrace.zoo import build_zoo

pytestmark = pytest.mark.zoo
QUICK = AuditConfig(
    diff=DiffConfig(
        collect=CollectConfig(samples=300),
        score=ScoreConfig(null_samples=200),
        steer=SteerConfig(strengths=(1.0, 4.0), samples_per_prompt=1, max_new_tokens=16),
    ),
    forget=ForgetConfig(drift=DriftConfig(samples=100, bootstrap=200)),
    weights=SpectraConfig(),
)
SCRIPT = "<script>alert(1)</script>"
# The cake organism's ground truth, in words: cold, never preheated ovens, frozen butter, bakers.
CAKE_WORDS = {"cold", "preheat", "preheated", "oven", "frozen", "butter", "bakers", "bake", "baking", "batter"}


@pytest.fixture(scope="module")
def zoo():
    return build_zoo("tiny")


class LoadProbe:
    """Wraps model loading: how many loaded models were alive at most, at any load."""

    def __init__(self, load):
        self.load, self.loaded, self.most_alive = load, [], 0

    def __call__(self, *args, **kwargs):
        gc.collect()
        alive = sum(ref() is not None for ref in self.loaded)
        model = self.load(*args, **kwargs)
        self.loaded.append(weakref.ref(model))
        self.most_alive = max(self.most_alive, alive + 1)
        return model


@pytest.fixture(scope="module")
def audited(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    with pytest.MonkeyPatch.context() as patch:
        probe = LoadProbe(pair.load_model)
        patch.setattr(pair, "load_model", probe)
        result = audit(
            zoo.path("base"),
            zoo.path("cake"),
            zoo.path("heldout"),
            out,
            data=zoo.organism("cake").documents,
            facts=zoo.path("facts"),
            control=zoo.path("control"),
            config=QUICK,
            fail_on=(parse_gate("lost_fraction > 0.99"),),
        )
    return out, result, probe


def test_the_audit_never_holds_two_models(audited):
    *_, probe = audited
    assert probe.most_alive == 1
    # base, cake (the trace's collection); base, control (the control's); cake (decoding, after every
    # process of a launched run has done its collecting); base, cake (the damage)
    assert len(probe.loaded) == 7


def test_the_audit_writes_a_summary_a_report_and_a_model_card(audited, zoo):
    out, result, _ = audited
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == 8 and summary["verdict"] == verdict(result)
    assert summary["metrics"]["lost_facts"] == result.damage.flips.lost > 0
    assert summary["gates"] == [{"condition": "lost_fraction > 0.99", "holds": False, "reason": ""}]
    assert not result.failed
    assert summary["manifest"]["base_model"] == str(zoo.path("base"))
    assert "clear trace" in verdict(result) and CAKE_WORDS & {t.strip().lower() for t in result.domain_tokens}
    card = ModelCard.load(out / "MODEL_CARD.md")
    assert card.data.base_model == str(zoo.path("base")) and card.data.base_model_relation == "finetune"
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "p-value", "perplexity", "refusal rate"}
    assert card.data.license == "apache-2.0" and "## Training data" in card.text
    trail = summary["paper_trail"]
    assert trail["records"] == 200 and trail["licence"] == {"data": "Apache-2.0", "base": "Apache-2.0", "warnings": []}
    assert summary["metrics"]["pii_found"] == 0 and summary["metrics"]["contaminated"] == 0
    # The weights' section: the seven matrices of every layer, read without loading a model.
    matrices = summary["weights"]["matrices"]
    layers = json.loads((zoo.path("base") / "config.json").read_text())["num_hidden_layers"]
    assert len(matrices) == 7 * layers and {m["layer"] for m in matrices} == set(range(layers))
    assert summary["weights"]["mean_relative_change"] > 0
    assert "intruder dimensions in" in (out / "report.html").read_text() and "- Weights: " in card.text


def test_strings_from_models_and_data_are_escaped(audited):
    _, result, _ = audited
    first = result.trace.traces[0]
    poisoned_lens = [replace(first.lens_finetuned[0], token=SCRIPT), *first.lens_finetuned[1:]]
    steering = result.trace.steering
    poisoned_unsteered = replace(
        steering.unsteered,
        generations=[replace(steering.unsteered.generations[0], text=SCRIPT), *steering.unsteered.generations[1:]],
    )
    trace = replace(
        result.trace,
        traces=[replace(first, lens_finetuned=poisoned_lens), *result.trace.traces[1:]],
        steering=replace(steering, unsteered=poisoned_unsteered),
    )
    pii = replace(result.paper_trail.pii, examples=[PiiExample(SCRIPT, "email", f"mail {SCRIPT} now")])
    trail = replace(result.paper_trail, pii=pii)
    page = render_report(replace(result, trace=trace, paper_trail=trail))
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page  # the page itself runs no script


def test_every_record_survives_its_json(audited):
    _, result, _ = audited
    assert result.manifest is not None and result.paper_trail is not None  # every record is in the round trip
    assert AuditResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_the_report_and_the_card_are_rebuilt_from_the_summary_alone(audited, tmp_path):
    out, _, _ = audited
    new = tmp_path / "new"  # a directory that does not exist yet
    rebuilt = subprocess.run(
        [sys.executable, "-m", "finetrace", "report", str(out / "summary.json"), "--out", str(new)],
        capture_output=True,
        text=True,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    for name in ("report.html", "MODEL_CARD.md"):
        assert (new / name).read_bytes() == (out / name).read_bytes(), name


def test_a_summary_of_another_version_is_refused(audited, tmp_path):
    out, _, _ = audited
    old = json.loads((out / "summary.json").read_text()) | {"schema_version": 3}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    with pytest.raises(FinetraceError, match="schema 3, expected 8"):
        AuditResult.read(tmp_path / "summary.json")


SUMMARY_FAULTS = {  # a summary.json edited by hand or by a bug -> the field the error line names
    "no traces": (lambda s: s["trace"].pop("traces"), "trace.traces is missing"),
    "an empty list of traces": (lambda s: s["trace"].update(traces=[]), "traces []: expected at least one"),
    "a string for a number": (
        lambda s: s["trace"]["significance"].update(p_value="0.01"),
        "trace.significance.p_value should be a number, not '0.01'",
    ),
    "a list for a record": (lambda s: s.update(damage=[]), "damage should be an object"),
    "a nested record of another version": (
        lambda s: s["trace"].update(schema_version=2),
        "trace.schema_version is 2 where this version writes 5",
    ),
    "true for a count": (lambda s: s["damage"]["flips"].update(lost=True), "damage.flips.lost should be a whole"),
    "an unknown gate": (
        lambda s: s["fail_on"].append({"metric": "bogus", "op": ">", "threshold": 1}),
        "bogus > 1 is not a gate",
    ),
}


@pytest.mark.parametrize(("edit", "expected"), SUMMARY_FAULTS.values(), ids=list(SUMMARY_FAULTS))
def test_a_corrupt_summary_is_one_line_naming_the_field(audited, tmp_path, edit, expected):
    out, _, _ = audited
    summary = json.loads((out / "summary.json").read_text())
    edit(summary)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rebuilt = CliRunner().invoke(app, ["report", str(tmp_path / "summary.json"), "--out", str(tmp_path / "new")])
    assert rebuilt.exit_code == 2 and "Traceback" not in rebuilt.output
    [line] = rebuilt.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line and "finetrace bug" not in line


def test_a_lens_test_with_nothing_to_count_gives_no_verdict_whatever_its_tie_break(audited, tmp_path):
    out, _, _ = audited
    summary = json.loads((out / "summary.json").read_text())
    significance = summary["trace"]["significance"]
    draws = len(significance["null_values"])
    # A real model's lens of word pieces: no domain token in the difference's top tokens or most draws'.
    significance |= {"relevant": 0, "null_values": [0] * (draws - 3) + [1, 2, 1], "p_value": 0.004}
    summary["trace"]["similarity"] |= {"steered_to_data": 0.401, "unsteered_to_data": 0.109}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    result = AuditResult.read(tmp_path / "summary.json")
    assert result.trace.lens_blind and not result.trace.clear  # p < 0.01 by the tie-break alone is no trace
    said = verdict(result)
    assert "cannot decide" in said and "clear trace" not in said and "No significant trace" not in said
    assert "steering moves the text toward the data (similarity 0.40 against 0.11 unsteered)" in said
    # One domain token in the difference's lens is something to count: the test decides again.
    significance["relevant"] = 1
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    counted = AuditResult.read(tmp_path / "summary.json")
    assert not counted.trace.lens_blind and counted.trace.clear and "clear trace" in verdict(counted)


def test_a_number_that_is_not_one_is_not_measured_and_fails_its_gate(audited, tmp_path):
    out, _, _ = audited
    summary = json.loads((out / "summary.json").read_text())
    summary["trace"]["significance"]["p_value"] = float("nan")  # Python's json writes NaN
    summary["fail_on"].append({"metric": "trace_p", "op": "<", "threshold": 0.01})
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    result = AuditResult.read(tmp_path / "summary.json")
    assert "The trace test was not measured" in verdict(result) and "No significant trace" not in verdict(result)
    [gate] = [g for g in result.gates if g.condition.startswith("trace_p")]
    assert gate.holds and gate.reason == "trace_p is nan, which passes no gate"
    rebuilt = CliRunner().invoke(app, ["report", str(tmp_path / "summary.json"), "--out", str(tmp_path / "new")])
    assert rebuilt.exit_code == 0, rebuilt.output
    page = (tmp_path / "new" / "report.html").read_text()
    assert "not measured</b><span>trace p-value" in page and "fails: trace_p is nan" in page
    assert ">nan<" not in page


SECTIONS = (
    "The trace",
    "Norm of the mean difference per position",
    "The test",
    "Patchscope",
    "Steering",
    "The damage",
    "Knowledge",
    "Facts lost",
    "Drift on general text",
    "The paper trail",
    "Provenance of the data",
    "Licence",
    "Personal data",
    "Duplicates",
    "Overlap with the evaluation data",
    "Run",
)
# What a cell must never show: a method or an object where a value belongs, or a number that is not one.
NOT_A_VALUE = re.compile(r"built-in method|bound method| object at 0x|\bNone\b|\bnan\b|\binf\b|undefined")


def test_the_report_reads_right_in_headless_chromium(audited):
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        message = "chromium is not installed (the Makefile installs it with apt where it can)"
        if os.environ.get("CI"):  # in CI a missing browser is a failure, not a pass
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    out, result, _ = audited
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((out / "report.html").as_uri())
        headings = page.locator("h2, h3").all_inner_texts()
        tables = [
            [row.locator("th, td").all_inner_texts() for row in table.locator("tr").all()]
            for table in page.locator("table").all()
        ]
        shown = {name: page.locator(f"#{name}").inner_text() for name in ("verdict", "lens")}
        page.screenshot(path=str(out / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert set(SECTIONS) <= {heading.strip() for heading in headings}
    assert len(tables) >= 10
    for rows in tables:
        assert len(rows) >= 2 and all(rows), rows  # a header and at least one row, none of them empty
        for cell in (cell for row in rows for cell in row):
            assert not NOT_A_VALUE.search(cell), (cell, rows[0])
    assert "clear trace" in shown["verdict"] and result.domain_tokens[0] in shown["lens"]
    assert (out / "report.png").stat().st_size > 10_000


def test_fail_on_sets_the_exit_code(zoo, tmp_path):
    run = ["audit", str(zoo.path("base")), str(zoo.path("cake")), "--out", str(tmp_path)]
    run += ["--samples", "100", "--drift-samples", "50", "--no-behaviour"]  # test_behaviour gates on refusals
    failing = CliRunner().invoke(app, [*run, "--fail-on", "lost_facts>0"])
    assert failing.exit_code == 1, failing.stderr
    assert "holds: audit failed" in failing.stdout
    passing = CliRunner().invoke(app, [*run, "--fail-on", "lost_fraction>0.9"])
    assert passing.exit_code == 0, passing.stderr
    untested = CliRunner().invoke(app, [*run, "--fail-on", "trace_p>0.5"])  # no --data: no trace test
    assert untested.exit_code == 1 and "fails: trace_p was not measured, so it passes no gate" in untested.stdout
    bad = CliRunner().invoke(app, [*run, "--fail-on", "lost>0.1"])
    assert bad.exit_code == 2 and "--fail-on 'lost>0.1'" in bad.stderr


def test_a_gate_on_an_unmeasured_metric_fails_with_the_reason():
    assert parse_gate("nll_change>=0.5").holds({"nll_change": None}) is True
    assert parse_gate("nll_change>=0.5").check({}).reason == "nll_change was not measured, so it passes no gate"
    assert parse_gate("trace_p < 0.01").holds({"trace_p": 0.001}) is True
    with pytest.raises(FinetraceError):
        parse_gate("trace_p < x")
