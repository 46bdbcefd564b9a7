"""`finetrace compare-evals`: two lm-evaluation-harness runs, base and fine-tune, compared
document by document, written as `compare-evals.json`.

read each run's newest results file and its samples -> pair the documents of each task ->
per task both accuracies, the flips, the exact McNemar test and the change's paired interval
(`evals.benchmarks`).
"""

from pathlib import Path

from finetrace._util.outputs import check_output_dir, refuse_overlap, write_json
from finetrace.evals.benchmarks import RESULT_NAME, BenchmarkComparison, compare_benchmarks


def compare_evals(
    base_run: str | Path,
    finetuned_run: str | Path,
    out: str | Path | None = None,
    metric: str | None = None,
) -> BenchmarkComparison:
    """What a fine-tune did to its benchmark scores, from two `lm_eval ... --log_samples` runs.

    Args:
        base_run: the base model's `--output_path` (or the model's sub-directory lm-eval made in it).
        finetuned_run: the fine-tune's, on the same tasks and documents.
        out: where to write `compare-evals.json` (nothing is written when None).
        metric: the 0/1 per-document metric to compare (default: `acc` where a task has it, else
            the first of its metrics that is 0 or 1 on every document).
    """
    if out is not None:
        refuse_overlap(out, {"base run": base_run, "fine-tuned run": finetuned_run})
        check_output_dir(out)
    comparison = compare_benchmarks(base_run, finetuned_run, metric)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / RESULT_NAME, comparison.to_dict())
    return comparison
