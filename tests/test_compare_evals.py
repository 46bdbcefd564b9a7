"""compare-evals: two lm-eval runs written here in lm-eval's documented `--log_samples` layout,
with known per-document outcomes, compared by document."""

import json
import math
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import pytest
from rich.console import Console
from typer.testing import CliRunner

from finetrace import BenchmarkComparison, cli, compare_evals
from finetrace.cli import app
from finetrace.errors import FinetraceError

STAMP = "2025-03-04T05-06-07.123456"
# Per task, the documents' (base right, fine-tune right) pairs.
KEPT, LOST, GAINED, NEVER = (1, 1), (1, 0), (0, 1), (0, 0)
ARC = [KEPT] * 25 + [LOST] * 7 + [GAINED] + [NEVER] * 7  # 32/40 -> 26/40
HELLASWAG = [KEPT] * 10 + [LOST, GAINED] + [NEVER] * 8  # 11/20 -> 11/20
ARC_P = 2 * (1 + 8) / 2**8  # exact McNemar, lost 7 and gained 1: 2 * sum_{k<=1} C(8, k) / 2^8


def write_run(
    output_path: Path,
    model: str,
    outcomes: dict[str, list[int]],
    stamp: str = STAMP,
    metrics: tuple[str, ...] = ("acc", "acc_norm"),
    filters: tuple[str, ...] = ("none",),
) -> Path:
    """What `lm_eval --model hf --model_args pretrained=MODEL --tasks ... --output_path OUTPUT_PATH
    --log_samples` writes: a sub-directory named after the model holding `results_<stamp>.json` and
    one `samples_<task>_<stamp>.jsonl` per task, a line per document and filter with its scores."""
    folder = output_path / model.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for task, right in outcomes.items():
        lines = []
        for doc_id, correct in enumerate(right):
            for filter_ in filters:
                doc = {"question": f"{task} question {doc_id}", "choices": ["yes", "no"], "answer": 0}
                scores = dict.fromkeys(metrics, float(correct))
                lines.append(
                    {
                        "doc_id": doc_id,
                        "doc": doc,
                        "target": "0",
                        "arguments": {"gen_args_0": {"arg_0": doc["question"], "arg_1": " yes"}},
                        "resps": [[["-1.5", str(bool(correct))]]],
                        "filtered_resps": [["-1.5", str(bool(correct))]],
                        "filter": filter_,
                        "metrics": list(metrics),
                        **scores,
                    }
                )
        (folder / f"samples_{task}_{stamp}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        results[task] = {"alias": task} | {f"{m},{f}": sum(right) / len(right) for m in metrics for f in filters}
    summary = {
        "results": results,
        "configs": {task: {"task": task, "output_type": "multiple_choice"} for task in outcomes},
        "versions": dict.fromkeys(outcomes, 1.0),
        "n-samples": {task: {"original": len(r), "effective": len(r)} for task, r in outcomes.items()},
        "config": {"model": "hf", "model_args": f"pretrained={model}", "batch_size": 1},
    }
    (folder / f"results_{stamp}.json").write_text(json.dumps(summary))
    return output_path


def pair_of_runs(root: Path, pairs: dict[str, list[tuple[int, int]]]) -> tuple[Path, Path]:
    """A base run and a fine-tune's run whose documents are right or wrong as each task's
    (base right, fine-tune right) pairs say."""
    base = {task: [before for before, _ in outcomes] for task, outcomes in pairs.items()}
    finetuned = {task: [after for _, after in outcomes] for task, outcomes in pairs.items()}
    return write_run(root / "base", "org/base", base), write_run(root / "ft", "org/base-sft", finetuned)


@pytest.fixture
def runs(tmp_path) -> tuple[Path, Path]:
    return pair_of_runs(tmp_path, {"arc_easy": ARC, "hellaswag": HELLASWAG})


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """A terminal wide enough for a task's row to be one line, whatever the one running the tests."""
    monkeypatch.setattr(cli, "console", Console(width=160))


def invoke(*args: str | Path):
    return CliRunner().invoke(app, ["compare-evals", *map(str, args)])


def test_each_task_gets_both_accuracies_its_flips_and_the_exact_mcnemar_p(runs):
    comparison = compare_evals(*runs)
    arc, hellaswag = comparison.tasks
    assert (arc.task, arc.filter, arc.metric, arc.n) == ("arc_easy", "none", "acc", 40)
    flips = arc.accuracy.flips
    assert (flips.kept, flips.lost, flips.gained, flips.never) == (25, 7, 1, 7)
    assert (arc.accuracy.before, arc.accuracy.after, arc.accuracy.change) == (0.8, 0.65, -0.15)
    assert ARC_P == 0.0703125 and arc.accuracy.p_value == ARC_P
    assert (hellaswag.n, hellaswag.accuracy.change, hellaswag.accuracy.p_value) == (20, 0.0, 1.0)
    assert comparison.mean_change == pytest.approx(-0.075) and comparison.benchmark_drop == pytest.approx(0.15)
    assert comparison.models == {"base": "pretrained=org/base", "finetuned": "pretrained=org/base-sft"}
    assert comparison.warnings == []


def test_the_change_interval_is_bonett_and_prices_on_the_paired_documents(runs):
    arc = compare_evals(*runs).tasks[0]
    # adjusted Wald: one pseudo-document added to each kind of flip (n = 40 + 2)
    gained, lost = (1 + 1) / 42, (7 + 1) / 42
    half = NormalDist().inv_cdf(0.975) * math.sqrt((gained + lost - (gained - lost) ** 2) / 42)
    low, high = arc.accuracy.change_interval
    assert (low, high) == pytest.approx((gained - lost - half, gained - lost + half))
    assert low < -0.15 < high < 0  # the drop is clear of zero, though McNemar's p is above 0.05


def test_the_record_round_trips_through_its_file(runs, tmp_path):
    out = tmp_path / "out"
    comparison = compare_evals(*runs, out=out)
    again = BenchmarkComparison.read(out / "compare-evals.json")
    assert again == comparison and again.tasks[0].accuracy.p_value == ARC_P
    written = json.loads((out / "compare-evals.json").read_text())
    assert written["benchmark_drop"] == pytest.approx(0.15) and written["tasks"][0]["accuracy"]["p_value"] == ARC_P
    assert set(written["inputs"]) == {
        str(runs[0] / "org__base" / f"results_{STAMP}.json"),
        str(runs[0] / "org__base" / f"samples_arc_easy_{STAMP}.jsonl"),
        str(runs[0] / "org__base" / f"samples_hellaswag_{STAMP}.jsonl"),
        str(runs[1] / "org__base-sft" / f"results_{STAMP}.json"),
        str(runs[1] / "org__base-sft" / f"samples_arc_easy_{STAMP}.jsonl"),
        str(runs[1] / "org__base-sft" / f"samples_hellaswag_{STAMP}.jsonl"),
    }


def test_cli_prints_a_row_per_task_and_writes_the_record(runs, tmp_path):
    done = invoke(*runs, "--out", tmp_path / "out")
    assert done.exit_code == 0, done.output
    rows = {cells[0]: cells[1:] for cells in _rows(done.stdout)}
    assert rows["arc_easy"] == ["acc", "40", "80.0%", "65.0%", "-15.0 [-28.4, -0.2]", "7", "1", "0.0703"]
    assert rows["hellaswag"] == ["acc", "20", "55.0%", "55.0%", "+0.0 [-17.8, +17.8]", "1", "1", "1"]
    assert "mean change over 2 tasks: -7.5 points; benchmark_drop (the largest drop): 0.150" in done.stdout
    assert (tmp_path / "out" / "compare-evals.json").is_file()


def _rows(output: str) -> list[list[str]]:
    """The cells of each row of a table rich printed."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


COMMAND_ONLY = """
import sys
from finetrace import cli
from finetrace.cli import app
try:
    app(sys.argv[1:])
except SystemExit as done:
    print(done.code, "torch" in sys.modules)
"""


def test_the_command_reads_the_logs_without_loading_torch(runs, tmp_path):
    args = ["compare-evals", *map(str, runs), "--out", str(tmp_path / "out")]
    shown = subprocess.run([sys.executable, "-c", COMMAND_ONLY, *args], capture_output=True, text=True, timeout=120)
    assert shown.stdout.split()[-2:] == ["0", "False"], shown.stderr


def test_fail_on_exits_1_when_a_task_drops_more_than_the_threshold(runs, tmp_path):
    assert invoke(*runs, "--out", tmp_path / "a", "--fail-on", "benchmark_drop>0.02").exit_code == 1
    assert invoke(*runs, "--out", tmp_path / "b", "--fail-on", "benchmark_drop>0.2").exit_code == 0


def test_fail_on_refuses_a_metric_compare_evals_does_not_measure_and_audit_refuses_benchmark_drop(runs):
    done = invoke(*runs, "--fail-on", "lost_fraction>0.05")
    assert done.exit_code == 2 and "does not measure lost_fraction" in done.stderr
    done = CliRunner().invoke(app, ["audit", "base", "ft", "--fail-on", "benchmark_drop>0.02"])
    assert done.exit_code == 2 and "does not measure benchmark_drop" in done.stderr


def test_without_acc_the_first_binary_metric_is_read_under_each_filter(tmp_path):
    outcomes = {"gsm8k": [1, 0, 1, 1]}
    filters = ("strict-match", "flexible-extract")
    base = write_run(tmp_path / "base", "b", outcomes, metrics=("exact_match",), filters=filters)
    finetuned = write_run(tmp_path / "ft", "f", {"gsm8k": [0, 0, 1, 1]}, metrics=("exact_match",), filters=filters)
    tasks = compare_evals(base, finetuned).tasks
    assert [(t.filter, t.metric, t.n, t.accuracy.flips.lost) for t in tasks] == [
        ("flexible-extract", "exact_match", 4, 1),
        ("strict-match", "exact_match", 4, 1),
    ]


def test_metric_option_chooses_the_score_read(runs):
    assert {t.metric for t in compare_evals(*runs, metric="acc_norm").tasks} == {"acc_norm"}


def test_the_newest_results_file_is_read_and_a_warning_says_so(runs):
    write_run(runs[1], "org/base-sft", {"arc_easy": [1] * 40, "hellaswag": [1] * 20}, stamp="2024-01-01T00-00-00")
    comparison = compare_evals(*runs)
    assert comparison.tasks[0].accuracy.after == 0.65
    assert comparison.warnings == [
        f"{runs[1] / 'org__base-sft'} holds 1 older results files; read the newest, results_{STAMP}.json"
    ]


def test_markup_in_a_task_name_is_printed_as_written(tmp_path):
    base, finetuned = pair_of_runs(tmp_path, {"[bold]x": [KEPT, LOST]})
    done = invoke(base, finetuned, "--out", tmp_path / "out")
    assert done.exit_code == 0, done.output
    assert "[bold]x" in done.stdout


def _broken_line(run: Path) -> None:
    path = next(run.glob(f"*/samples_arc_easy_{STAMP}.jsonl"))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + '{"doc_id": 2, "doc":\n' + "".join(lines[3:]))


def _not_utf8(run: Path) -> None:
    path = next(run.glob(f"*/samples_arc_easy_{STAMP}.jsonl"))
    path.write_bytes(path.read_bytes().replace(b"question 3", b"question \xff3"))


def _perplexity(run: Path) -> None:
    path = next(run.glob(f"*/samples_hellaswag_{STAMP}.jsonl"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        line["metrics"], line["word_perplexity"] = ["word_perplexity"], [-12.5, 3]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _other_document(run: Path) -> None:
    path = next(run.glob(f"*/samples_arc_easy_{STAMP}.jsonl"))
    path.write_text(path.read_text().replace("arc_easy question 5", "another question"))


@pytest.mark.parametrize(
    "break_it, message",
    [
        (
            lambda base, ft: write_run(ft, "org/base-sft", {"mmlu": [1]}, stamp="2025-03-04T05-06-08"),
            "only in {base}: arc_easy, hellaswag; only in {ft}: mmlu",
        ),
        (
            lambda base, ft: write_run(ft, "org/base-sft", {"arc_easy": [1] * 38, "hellaswag": [1] * 20}),
            "task arc_easy: 2 documents only in {base_arc} (doc_id 38, 39) and 0 only in {ft_arc} (none)",
        ),
        (lambda base, ft: _broken_line(ft), "{ft_arc} line 3 is not JSON"),
        (lambda base, ft: _not_utf8(ft), "{ft_arc} line 4 is not UTF-8 text"),
        (lambda base, ft: _perplexity(base), "task hellaswag (filter none) has no metric that is 0 or 1"),
        (lambda base, ft: _other_document(ft), "task arc_easy: 1 documents have the same doc_id but other contents"),
        (lambda base, ft: write_run(base, "other", {"arc_easy": [1]}), "holds the results of several models"),
    ],
    ids=["tasks", "document-ids", "not-json", "not-utf8", "non-binary", "other-document", "two-models"],
)
def test_bad_runs_are_one_error_line_and_exit_code_2(runs, break_it, message):
    base, ft = runs
    break_it(base, ft)
    done = invoke(base, ft, "--out", base.parent / "out")
    files = {
        "base": base,
        "ft": ft,
        "base_arc": base / "org__base" / f"samples_arc_easy_{STAMP}.jsonl",
        "ft_arc": ft / "org__base-sft" / f"samples_arc_easy_{STAMP}.jsonl",
    }
    assert done.exit_code == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert message.format(**files) in done.stderr
    assert not (base.parent / "out").exists()


def test_a_missing_directory_and_a_missing_metric_are_one_error_line(runs, tmp_path):
    done = invoke(runs[0], tmp_path / "nowhere")
    assert done.exit_code == 2 and done.stderr.count("\n") == 1 and "nowhere is not a directory" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = invoke(empty, runs[1])
    assert done.exit_code == 2 and "holds no lm-eval results_<timestamp>.json" in done.stderr
    with pytest.raises(FinetraceError, match=r"line 1 has no metric exact_match \(its metrics: acc, acc_norm\)"):
        compare_evals(*runs, metric="exact_match")


def test_an_acc_that_is_not_0_or_1_is_refused_with_its_line(runs):
    path = next(runs[1].glob(f"*/samples_hellaswag_{STAMP}.jsonl"))
    path.write_text(path.read_text().replace('"acc": 1.0', '"acc": 0.5', 1))
    with pytest.raises(FinetraceError, match=r"samples_hellaswag_.*\.jsonl line 1: acc is 0.5, not 0 or 1"):
        compare_evals(*runs)
