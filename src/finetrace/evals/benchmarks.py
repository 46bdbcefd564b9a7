"""Two lm-evaluation-harness runs, base and fine-tune, compared document by document.

`lm_eval --output_path DIR --log_samples` writes `results_<timestamp>.json` and, per task,
`samples_<task>_<timestamp>.jsonl`: each document's scores under each filter of the answers.
Both runs scored the same documents, so whether a score changed is a paired question: a
document right before and wrong after is a flip, the test is the exact McNemar test on the
flips (flips.py) and the change gets the paired interval of rates.py. An unpaired test (two
accuracies, two standard errors) counts every document both models answer alike as noise,
so its interval is wider than the data warrant and a real drop hides inside it.
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetrace._util.outputs import read_json
from finetrace._util.records import SHORT, Result
from finetrace.errors import FinetraceError
from finetrace.evals.flips import flip_matrix
from finetrace.evals.rates import RateChange

SCHEMA_VERSION = 1
RESULT_NAME = "compare-evals.json"
CONFIDENCE = 0.95  # of the change's interval
PREFERRED_METRIC = "acc"  # lm-eval's accuracy, where a task reports one
SHOWN_IDS = 5  # document ids an error quotes
RESULTS_FILE = re.compile(r"^results_(?P<stamp>.*)\.json$")
Key = tuple[int, str]  # a sample's (doc_id, filter): lm-eval logs a document once per filter


@dataclass(frozen=True)
class TaskComparison:
    """One task, under one of lm-eval's filters of the answers, in both runs."""

    task: str
    filter: str  # "none", or the filter's name ("strict-match", "flexible-extract", ...)
    metric: str  # the 0/1 score read per document: right (1) or wrong (0)
    # before: the base's accuracy, after: the fine-tune's; kept, lost, gained, never: documents
    accuracy: RateChange
    derived = ("n",)

    @property
    def n(self) -> int:
        return self.accuracy.flips.total


@dataclass(frozen=True)
class BenchmarkComparison(Result):
    """Two lm-eval runs' shared tasks, paired by document; written as `compare-evals.json`."""

    base: str  # the base run's directory, as given
    finetuned: str  # the fine-tune's
    base_results: str  # the results file read from each run
    finetuned_results: str
    models: dict[str, str]  # each run's `model_args`, by role ("base", "finetuned"), where its results name them
    metric: str | None  # the metric asked for; None: acc where a task has it, else its first 0/1 metric
    tasks: list[TaskComparison]  # by task, then filter
    inputs: dict[str, str]  # the sha256 of every file read, by path
    warnings: list[str] = field(default_factory=list)  # results files passed over, task versions that differ
    schema_version: int = SCHEMA_VERSION
    derived = ("mean_change", "benchmark_drop")

    @property
    def mean_change(self) -> float:
        """The change of accuracy averaged over the tasks (a task with two filters counts twice)."""
        return sum(task.accuracy.change for task in self.tasks) / len(self.tasks)

    @property
    def benchmark_drop(self) -> float:
        """The largest drop of accuracy in any task (0.02 = 2 points; negative when every task rose):
        a fine-tune that breaks one benchmark out of ten shows undiluted."""
        return max(-task.accuracy.change for task in self.tasks)


def benchmark_metrics(comparison: BenchmarkComparison) -> dict[str, float | None]:
    """The numbers `--fail-on` conditions of `compare-evals` test."""
    return {"benchmark_drop": comparison.benchmark_drop}


@dataclass(frozen=True)
class Sample:
    """One line of a samples file: where it is, its scores, and a digest of its document."""

    line: int
    names: tuple[str, ...]  # the metrics the line lists, in its order
    scores: dict[str, Any]  # each listed metric's value, where the line holds one
    document: str  # sha256 of the document: one doc_id must name the same document in both runs


@dataclass(frozen=True)
class LoggedTask:
    path: Path
    samples: dict[Key, Sample]


@dataclass(frozen=True)
class LoggedRun:
    """What one `lm_eval --log_samples` run wrote: its newest results file and its tasks' samples."""

    directory: Path
    results: Path
    model_args: str | None
    versions: dict[str, Any]  # each task's version, as the results file gives it
    tasks: dict[str, LoggedTask]
    digests: dict[str, str]  # sha256 of each file read, by path
    warnings: list[str]


def compare_benchmarks(base: str | Path, finetuned: str | Path, metric: str | None = None) -> BenchmarkComparison:
    """Both runs' tasks paired by document: per task (and filter) both accuracies, the flips, the
    exact McNemar p-value and the change's paired interval.

    Args:
        base, finetuned: the `--output_path` directories of `lm_eval ... --log_samples`, or the
            model's sub-directory lm-eval made in one.
        metric: the 0/1 metric to compare (default: `acc` where a task has it, else the first of
            its metrics that is 0 or 1 on every document).
    """
    runs = {"base": read_run(base), "finetuned": read_run(finetuned)}
    before, after = runs["base"], runs["finetuned"]
    _same_tasks(before, after)
    return BenchmarkComparison(
        base=str(base),
        finetuned=str(finetuned),
        base_results=str(before.results),
        finetuned_results=str(after.results),
        models={role: run.model_args for role, run in runs.items() if run.model_args is not None},
        metric=metric,
        tasks=[
            comparison
            for task in sorted(before.tasks)
            for comparison in _compare_task(task, before.tasks[task], after.tasks[task], metric)
        ],
        inputs=before.digests | after.digests,
        warnings=before.warnings + after.warnings + _version_warnings(before, after),
    )


def read_run(directory: str | Path) -> LoggedRun:
    """A run's newest results file (in `directory` or the one model sub-directory lm-eval made)
    and the samples files written with it; one error line when there are none."""
    results, warnings = _results_file(Path(directory))
    data = read_json(results)
    if not isinstance(data, dict):
        raise FinetraceError(f"{results} is not an lm-eval results file: expected a JSON object")
    stamp = RESULTS_FILE.match(results.name)["stamp"]
    suffix = f"_{stamp}.jsonl"
    files = sorted(p for p in results.parent.glob("samples_*.jsonl") if p.name.endswith(suffix))
    if not files:
        raise FinetraceError(f"{results} has no samples_<task>{suffix} beside it: rerun lm_eval with --log_samples")
    digests = {str(results): hashlib.sha256(results.read_bytes()).hexdigest()}
    tasks = {}
    for path in files:
        samples, digests[str(path)] = _read_samples(path)
        tasks[path.name.removeprefix("samples_").removesuffix(suffix)] = LoggedTask(path, samples)
    config, versions = data.get("config"), data.get("versions")
    model_args = config.get("model_args") if isinstance(config, dict) else None
    return LoggedRun(
        directory=Path(directory),
        results=results,
        # the command line writes a string, the Python API may pass a dict
        model_args=model_args if model_args is None or isinstance(model_args, str) else json.dumps(model_args),
        versions=versions if isinstance(versions, dict) else {},
        tasks=tasks,
        digests=digests,
        warnings=warnings,
    )


def _results_file(directory: Path) -> tuple[Path, list[str]]:
    """The newest `results_<timestamp>.json` of one run, and a warning when older ones were passed over."""
    if not directory.is_dir():
        raise FinetraceError(
            f"{directory} is not a directory: give the --output_path of an lm_eval run with --log_samples"
        )
    found = [p for p in [*directory.glob("results_*.json"), *directory.glob("*/results_*.json")] if p.is_file()]
    if not found:
        raise FinetraceError(
            f"{directory} holds no lm-eval results_<timestamp>.json, nor does a sub-directory of it: "
            f"give the --output_path of an lm_eval run with --log_samples"
        )
    folders = sorted({p.parent for p in found})
    if len(folders) > 1:
        names = ", ".join(str(folder.relative_to(directory)) for folder in folders)
        raise FinetraceError(f"{directory} holds the results of several models ({names}): give the directory of one")
    # lm-eval's timestamps are ISO dates with "-" for ":", so their order as text is their order in time
    newest = max(found, key=lambda p: RESULTS_FILE.match(p.name)["stamp"])
    older = len(found) - 1
    return newest, [f"{folders[0]} holds {older} older results files; read the newest, {newest.name}"] if older else []


def _read_samples(path: Path) -> tuple[dict[Key, Sample], str]:
    """A samples file's lines by (doc_id, filter), and the file's sha256."""
    samples: dict[Key, Sample] = {}
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            digest.update(raw)
            if not raw.strip():
                continue
            key, sample = _sample(path, number, raw)
            if key in samples:
                raise FinetraceError(
                    f"{path} line {number} repeats doc_id {key[0]} (filter {key[1]}) of line {samples[key].line}: "
                    f"the file holds two runs' samples; rerun lm_eval into an empty --output_path"
                )
            samples[key] = sample
    if not samples:
        raise FinetraceError(f"{path} holds no samples: rerun lm_eval with --log_samples")
    return samples, digest.hexdigest()


def _sample(path: Path, number: int, raw: bytes) -> tuple[Key, Sample]:
    where = f"{path} line {number}"
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise FinetraceError(f"{where} is not UTF-8 text (byte {error.start}): lm-eval writes UTF-8 JSON") from None
    except (ValueError, RecursionError) as error:  # json's own error, or nesting too deep to parse
        raise FinetraceError(f"{where} is not JSON ({getattr(error, 'msg', 'nested too deeply')})") from None
    fields = record if isinstance(record, dict) else {}
    doc_id, filter_, names = fields.get("doc_id"), fields.get("filter"), fields.get("metrics")
    well_formed = (
        isinstance(doc_id, int)
        and not isinstance(doc_id, bool)
        and isinstance(filter_, str)
        and isinstance(names, list)
        and all(isinstance(name, str) for name in names)
        and "doc" in fields
    )
    if not well_formed:
        raise FinetraceError(
            f"{where} is not an lm-eval sample: expected an object with doc_id (a whole number), doc, "
            f"filter (a string) and metrics (a list of metric names)"
        )
    document = json.dumps(record["doc"], sort_keys=True)  # ASCII: a lone surrogate escape stays hashable
    sample = Sample(
        line=number,
        names=tuple(names),
        scores={name: record[name] for name in names if name in record},
        document=hashlib.sha256(document.encode()).hexdigest(),
    )
    return (doc_id, filter_), sample


def _same_tasks(before: LoggedRun, after: LoggedRun) -> None:
    only_before, only_after = sorted(before.tasks.keys() - after.tasks), sorted(after.tasks.keys() - before.tasks)
    if only_before or only_after:
        raise FinetraceError(
            f"the runs have different tasks: only in {before.directory}: {', '.join(only_before) or 'none'}; "
            f"only in {after.directory}: {', '.join(only_after) or 'none'}; run lm_eval on the same --tasks"
        )


def _compare_task(task: str, before: LoggedTask, after: LoggedTask, metric: str | None) -> list[TaskComparison]:
    """A task's comparison under each filter, after checking both runs scored the same documents."""
    _same_documents(task, before, after)
    comparisons = []
    for filter_ in sorted({key[1] for key in before.samples}):
        keys = sorted(key for key in before.samples if key[1] == filter_)
        paired = [(before.samples[key], after.samples[key]) for key in keys]
        name = metric or _default_metric(task, filter_, [sample for pair in paired for sample in pair])
        flips = flip_matrix(
            [_right(before.path, base, name) for base, _ in paired],
            [_right(after.path, finetuned, name) for _, finetuned in paired],
        )
        comparisons.append(TaskComparison(task, filter_, name, RateChange(flips, CONFIDENCE)))
    return comparisons


def _same_documents(task: str, before: LoggedTask, after: LoggedTask) -> None:
    """Refuse a task whose runs scored other documents, or other contents under the same ids
    (another --limit, another version of the task's data): their flips would pair strangers."""
    only_before, only_after = (
        sorted(before.samples.keys() - after.samples),
        sorted(after.samples.keys() - before.samples),
    )
    if only_before or only_after:
        raise FinetraceError(
            f"task {task}: {len(only_before)} documents only in {before.path} ({_ids(only_before)}) and "
            f"{len(only_after)} only in {after.path} ({_ids(only_after)}): run both with the same "
            f"--limit and the same version of the task"
        )
    changed = [key for key in sorted(before.samples) if before.samples[key].document != after.samples[key].document]
    if changed:
        raise FinetraceError(
            f"task {task}: {len(changed)} documents have the same doc_id but other contents in {before.path} "
            f"and {after.path} ({_ids(changed)}): run both with the same version of the task's data"
        )


def _default_metric(task: str, filter_: str, samples: list[Sample]) -> str:
    """acc where the task reports it (a value that is not 0 or 1 is then refused by `_right`),
    else the first listed metric that is 0 or 1 on every document of both runs."""
    names = samples[0].names
    if PREFERRED_METRIC in names:
        return PREFERRED_METRIC
    binary = [name for name in names if all(_is_binary(sample.scores.get(name)) for sample in samples)]
    if not binary:
        raise FinetraceError(
            f"task {task} (filter {filter_}) has no metric that is 0 or 1 on every document "
            f"(its metrics: {', '.join(names) or 'none'}): compare-evals compares right-or-wrong scores "
            f"(acc, exact_match), not perplexities or other averages; leave the task out or give --metric"
        )
    return binary[0]


def _right(path: Path, sample: Sample, metric: str) -> bool:
    if metric not in sample.scores:
        raise FinetraceError(
            f"{path} line {sample.line} has no metric {metric} (its metrics: {', '.join(sample.names) or 'none'}); "
            f"choose one of them with --metric"
        )
    value = sample.scores[metric]
    if not _is_binary(value):
        raise FinetraceError(
            f"{path} line {sample.line}: {metric} is {SHORT.repr(value)}, not 0 or 1: compare-evals compares "
            f"right-or-wrong scores per document (acc, exact_match); choose one with --metric"
        )
    return bool(value)


def _is_binary(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1))


def _ids(keys: list[Key]) -> str:
    shown = ", ".join(
        str(doc_id) if filter_ == "none" else f"{doc_id} ({filter_})" for doc_id, filter_ in keys[:SHOWN_IDS]
    )
    more = f" and {len(keys) - SHOWN_IDS} more" if len(keys) > SHOWN_IDS else ""
    return f"doc_id {shown}{more}" if keys else "none"


def _version_warnings(before: LoggedRun, after: LoggedRun) -> list[str]:
    """Tasks whose version differs between the runs: the same documents, perhaps scored otherwise."""
    return [
        f"task {task} is version {before.versions[task]} in {before.results} and {after.versions[task]} in "
        f"{after.results}: its scoring may differ"
        for task in sorted(before.tasks)
        if task in before.versions and task in after.versions and before.versions[task] != after.versions[task]
    ]
