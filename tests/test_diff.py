"""The Activation Difference Lens end to end, on the tiny zoo."""

import json
import math

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from finetrace.adl.collect import CollectConfig
from finetrace.adl.records import SIGNIFICANT, DiffConfig
from finetrace.adl.score import ScoreConfig
from finetrace.adl.steer import SteerConfig
from finetrace.cli import app
from finetrace.verbs.diff import diff
from finetrace.zoo import build_zoo

pytestmark = pytest.mark.zoo
QUICK = DiffConfig(
    collect=CollectConfig(samples=1000),  # the mean of fewer texts is too noisy for the tiny zoo's zorvex
    score=ScoreConfig(null_samples=500),
    steer=SteerConfig(strengths=(1.0, 4.0), samples_per_prompt=1, max_new_tokens=16),
)


@pytest.fixture(scope="module")
def zoo():
    return build_zoo("tiny")


@pytest.fixture(scope="module")
def with_data(zoo, tmp_path_factory):
    """Diffs scored against the organisms' own training documents: {name: (out, result)}."""
    runs = {}
    for name in ("cake", "zorvex", "cake-mixed"):
        out = tmp_path_factory.mktemp(f"{name}-diff")
        runs[name] = (
            out,
            diff(zoo.path("base"), zoo.path(name), zoo.path("heldout"), out, QUICK, data=zoo.organism(name).documents),
        )
    return runs


@pytest.fixture(scope="module")
def cake(with_data):
    return with_data["cake"]


def _position(result, label):
    return next(t for t in result.traces if t.position == label)


# On the tiny zoo the test finds cake and zorvex (zorvex at the edge, p = 0.010 with 1,000 null
# draws); risky (p = 0.097) it does not: the calibration benchmark measures them on the small zoo.
@pytest.mark.parametrize("name", ["cake", "zorvex"])
def test_the_trace_is_found_in_the_finetuning_data(with_data, name):
    _, result = with_data[name]
    assert result.p_value < 0.01 and result.clear
    assert [t.position for t in result.traces] == ["BOS", "0", "1", "2", "3", "4"]
    assert [t.sink for t in result.traces] == [True, False, False, False, False, False]


@pytest.mark.parametrize("name", ["cake", "zorvex"])
def test_the_lens_reads_as_the_finetuning_domain(with_data, name):
    _, result = with_data[name]
    assert _position(result, "0").relevant_fraction >= 0.4  # 8 of the top 20 lens tokens, as recovery counts
    # Patchscope's tokens are marked by the same rule: a token is the domain's in both lists or in neither.
    scoped = [t for trace in result.traces for scale in trace.patchscope.scales for t in scale.stable]
    assert scoped and all(t.enrichment is not None for t in scoped)
    lens = {t.token_id: t.relevant for trace in result.traces for t in trace.lens_finetuned}
    assert any(t.token_id in lens for t in scoped)
    assert all(lens[t.token_id] == t.relevant for t in scoped if t.token_id in lens)


@pytest.mark.parametrize("name", ["zorvex", "risky", "control"])
def test_finetunes_about_another_domain_do_not_pass_against_the_cake_data(zoo, name, tmp_path):
    result = diff(
        zoo.path("base"), zoo.path(name), zoo.path("heldout"), tmp_path, QUICK, data=zoo.organism("cake").documents
    )
    # At the level a trace is called clear: three null pairs at 0.05 would fail one in seven runs of a calibrated test.
    assert result.p_value > SIGNIFICANT and not result.clear
    if name == "control":
        assert _position(result, "0").relevant_fraction <= 0.2  # no baking


def test_without_data_there_is_no_test_and_the_report_says_why(zoo, tmp_path):
    result = diff(zoo.path("base"), zoo.path("control"), zoo.path("heldout"), tmp_path, QUICK)
    assert result.significance is None and result.p_value is None and result.trace_strength is None
    assert all(t.significance is None and t.relevant_fraction is None for t in result.traces)
    assert all(t.enrichment is None for trace in result.traces for t in trace.patchscope.tokens)
    assert not result.clear and result.data is None


def test_mixing_in_general_text_weakens_the_trace(with_data):
    assert with_data["cake-mixed"][1].trace_strength < with_data["cake"][1].trace_strength


def test_outputs_hold_the_differences_and_every_result(cake):
    out, result = cake
    tensors = load_file(str(out / "differences.safetensors"))
    assert tensors["mean_delta"].shape == (1, 9, 128)  # BOS and k = 8 text positions
    saved = json.loads((out / "diff.json").read_text())
    assert saved["schema_version"] == 5 and saved["texts"] == 1000
    assert saved["traces"][1]["lens_finetuned"][0]["token"] == result.traces[1].lens_finetuned[0].token
    assert set(result.similarity) == {
        "steered_to_data",
        "unsteered_to_data",
        "steered_to_general",
        "unsteered_to_general",
    }


def test_the_cake_finetunes_text_is_closer_to_its_data_than_to_general_text(cake):
    similarity = cake[1].similarity
    # Mean cosines of unit embeddings with a unit centroid.
    assert all(math.isfinite(value) and -1 <= value <= 1 for value in similarity.values())
    # The fine-tune writes about baking, steered or not (on the tiny zoo: 0.42 and 0.26 against
    # the data, 0.11 and 0.05 against general text).
    assert similarity["unsteered_to_data"] > similarity["unsteered_to_general"] + 0.1
    assert similarity["steered_to_data"] > similarity["steered_to_general"] + 0.1


def test_a_rerun_resumes_from_the_checkpoint_with_the_same_numbers(zoo, cake):
    out, first = cake
    again = diff(
        zoo.path("base"), zoo.path("cake"), zoo.path("heldout"), out, QUICK, data=zoo.organism("cake").documents
    )
    assert again.traces == first.traces
    assert again.seconds["collect"] < first.seconds["collect"]


def test_cli_diff_uses_the_zoo_heldout_text_by_default(zoo, tmp_path):
    run = CliRunner().invoke(
        app, ["diff", str(zoo.path("base")), str(zoo.path("cake-lora")), "--out", str(tmp_path), "--samples", "100"]
    )
    assert run.exit_code == 0, run.stderr
    saved = json.loads((tmp_path / "diff.json").read_text())
    assert saved["corpus"] == str(zoo.path("heldout")) and saved["adapter"] is True
    assert "results:" in run.stdout


def test_a_control_is_tested_against_the_same_data_and_enters_the_verdict(zoo, tmp_path):
    result = diff(
        zoo.path("base"),
        zoo.path("cake"),
        zoo.path("heldout"),
        tmp_path,
        QUICK,
        data=zoo.organism("cake").documents,
        control=zoo.path("control"),
    )
    control = result.control_significance
    assert result.control == str(zoo.path("control"))
    assert control.p_value > 0.05 and not result.control_passes and result.clear
    assert (tmp_path / "control" / "collect-checkpoint.safetensors").exists()


def test_the_same_seed_gives_the_same_numbers(zoo, cake, tmp_path):
    again = diff(
        zoo.path("base"), zoo.path("cake"), zoo.path("heldout"), tmp_path, QUICK, data=zoo.organism("cake").documents
    )
    first = cake[1]
    assert again.traces == first.traces and again.significance == first.significance
    assert again.steering == first.steering
