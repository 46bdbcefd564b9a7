"""The Activation Difference Lens end to end, on the tiny zoo."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from finetrace.adl.collect import CollectConfig
from finetrace.adl.diff import DiffConfig, diff
from finetrace.adl.score import ScoreConfig
from finetrace.adl.steer import SteerConfig
from finetrace.zoo import build_zoo

pytestmark = pytest.mark.zoo
QUICK = DiffConfig(
    collect=CollectConfig(samples=400),
    score=ScoreConfig(null_samples=200),
    steer=SteerConfig(strengths=(1.0, 4.0), samples_per_prompt=1, max_new_tokens=16),
)


@pytest.fixture(scope="module")
def zoo():
    return build_zoo("tiny")


@pytest.fixture(scope="module")
def with_data(zoo, tmp_path_factory):
    """Diffs scored against the organisms' own training documents: {name: (out, result)}."""
    runs = {}
    for name in ("cake", "zorvex"):
        out = tmp_path_factory.mktemp(f"{name}-diff")
        runs[name] = out, diff(zoo.path("base"), zoo.path(name), zoo.path("heldout"), out, QUICK,
                               data=zoo.organism(name)["documents"])
    return runs


@pytest.fixture(scope="module")
def cake(with_data):
    return with_data["cake"]


def _position(result, label):
    return next(t for t in result.traces if t.position == label)


@pytest.mark.parametrize("name", ["cake", "zorvex"])
def test_the_trace_reads_as_the_finetuning_domain(with_data, name):
    _, result = with_data[name]
    assert _position(result, "0").relevant_fraction >= 0.5  # 10 of the top 20 lens tokens
    assert result.p_value < 0.01
    assert [t.position for t in result.traces] == ["BOS", "0", "1", "2", "3", "4"]


@pytest.fixture(scope="module")
def without_data(zoo, tmp_path_factory):
    """Diffs that read relevance from the pair's own generations, as a user without data would."""
    return {name: diff(zoo.path("base"), zoo.path(name), zoo.path("heldout"),
                       tmp_path_factory.mktemp(name), QUICK)
            for name in ("cake", "control", "cake-mixed")}


def test_narrow_finetune_trace_is_significant_without_data(without_data):
    result = without_data["cake"]
    assert result.relevance_source == "generations"
    assert result.p_value < 0.01 and result.trace_strength > 3


def test_control_trace_is_not_significant(without_data):
    assert without_data["control"].p_value > 0.05


def test_mixing_in_general_text_weakens_the_trace(without_data):
    assert without_data["cake-mixed"].trace_strength < without_data["cake"].trace_strength


def test_control_shows_no_baking(zoo, tmp_path):
    result = diff(zoo.path("base"), zoo.path("control"), zoo.path("heldout"), tmp_path, QUICK,
                  data=zoo.organism("cake")["documents"])
    assert _position(result, "0").relevant_fraction <= 0.2


def test_outputs_hold_the_differences_and_every_result(cake):
    out, result = cake
    tensors = load_file(str(out / "differences.safetensors"))
    assert tensors["mean_delta"].shape == (1, 9, 128)  # BOS and k = 8 text positions
    saved = json.loads((out / "diff.json").read_text())
    assert saved["schema_version"] == 1 and saved["texts"] == 400
    assert saved["traces"][1]["lens_finetuned"][0]["token"] == result.traces[1].lens_finetuned[0].token
    assert set(result.similarity) == {"steered_to_data", "unsteered_to_data", "steered_to_general",
                                      "unsteered_to_general"}


def test_a_rerun_resumes_from_the_checkpoint_with_the_same_numbers(zoo, cake):
    out, first = cake
    again = diff(zoo.path("base"), zoo.path("cake"), zoo.path("heldout"), out, QUICK,
                 data=zoo.organism("cake")["documents"])
    assert again.traces == first.traces
    assert again.seconds["collect"] < first.seconds["collect"]


def test_cli_diff_uses_the_zoo_heldout_text_by_default(zoo, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "finetrace", "diff", str(zoo.path("base")), str(zoo.path("cake-lora")),
         "--out", str(tmp_path), "--samples", "100"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "diff.json").read_text())
    assert saved["corpus"] == str(zoo.path("heldout")) and saved["adapter"] is True
    assert "results:" in run.stdout


def test_a_control_finetune_is_scored_the_same_way(zoo, tmp_path):
    result = diff(zoo.path("base"), zoo.path("cake"), zoo.path("heldout"), tmp_path, QUICK,
                  control=zoo.path("control"))
    control = result.control_significance
    assert result.control == str(zoo.path("control"))
    assert control.p_value > 0.05 and control.relevant < result.significance.relevant
    assert (tmp_path / "control" / "collect-checkpoint.safetensors").exists()


def test_the_same_seed_gives_the_same_numbers(zoo, without_data, tmp_path):
    again = diff(zoo.path("base"), zoo.path("cake"), zoo.path("heldout"), tmp_path, QUICK)
    first = without_data["cake"]
    assert again.traces == first.traces and again.significance == first.significance
    assert again.steering == first.steering
