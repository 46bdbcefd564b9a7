"""`finetrace watch`: the cheap audit of every checkpoint of a training run, as a time series.

find the checkpoints -> reuse the points an earlier run measured with the same key -> read the
base once (only when a checkpoint is new) -> audit each new checkpoint, one model in memory at a
time -> `watch.json` (after every checkpoint, so an interrupted run keeps its work) and `watch.html`.
"""

import gc
from dataclasses import replace
from pathlib import Path

from finetrace._util.fingerprints import environment
from finetrace._util.outputs import check_output_dir, refuse_overlap, write_json
from finetrace.evals.facts import COMMON_FACTS
from finetrace.gates import Gate
from finetrace.models.load import load_model, load_tokenizer, resolve_device, resolve_dtype, weights_digest
from finetrace.monitor.cheap import BaseReference, WatchConfig, cheap_audit, read_reference, refuse_untestable
from finetrace.monitor.checkpoints import Checkpoint, find_checkpoints, load_checkpoint
from finetrace.monitor.series import (
    PAGE_NAME,
    WATCH_NAME,
    WatchPoint,
    WatchSeries,
    point_fingerprint,
    previous_points,
    series_key,
)
from finetrace.report.watch import write_watch_report
from finetrace.run import RunConfig


def watch(
    base: str | Path,
    checkpoints: list[str | Path],
    corpus: str | Path,
    out: str | Path,
    facts: str | Path | None = None,
    data: str | Path | None = None,
    config: WatchConfig = WatchConfig(),
    run: RunConfig = RunConfig(),
    fail_on: tuple[Gate, ...] = (),
) -> WatchSeries:
    """The cheap audit of each checkpoint against `base`, by training step, written under `out`.

    Args:
        base: the base model (a directory or a hub id).
        checkpoints: model or adapter directories, globs of them, or `Trainer` output directories.
        corpus: unrelated general text, for the trace and for the drift.
        out: output directory: `watch.json` (resumed from) and `watch.html`.
        facts: cloze facts (JSONL; default: finetrace's common-knowledge facts).
        data: the fine-tuning data; without it the trace is not tested.
        fail_on: conditions whose first crossing the series records (see `finetrace.gates`).
    """
    facts = facts if facts is not None else COMMON_FACTS
    refuse_overlap(out, {"base model": base, "corpus": corpus, "facts": facts, "data": data})
    out = check_output_dir(out)
    refuse_untestable(fail_on, data)
    found = find_checkpoints(checkpoints)
    device = resolve_device(run.device)
    dtype = resolve_dtype(run.dtype, device)
    key = series_key(weights_digest(base), corpus, facts, data, config, run, device.type)
    previous = previous_points(out / WATCH_NAME, key)
    fingerprints = {c.step: point_fingerprint(key, weights_digest(c.path)) for c in found}
    points = {point.step: point for point in _deleted_since(previous.values(), found)}
    # A point is reused by its weights, at the step of the checkpoint that has them now: two
    # checkpoints with the same weights are two steps.
    points |= {
        c.step: replace(previous[fingerprints[c.step]], step=c.step, checkpoint=str(c.path))
        for c in found
        if fingerprints[c.step] in previous
    }
    new = [c for c in found if fingerprints[c.step] not in previous]
    reference = _reference(base, device, dtype, corpus, facts, data, config, run.text_field) if new else None

    def series(audited: list[int]) -> WatchSeries:
        return WatchSeries(
            base=str(base),
            corpus=str(corpus),
            facts=str(facts),
            data=str(data) if data is not None else None,
            config=config,
            run=run,
            key=key,
            points=[points[step] for step in sorted(points)],
            gates=list(fail_on),
            audited=audited,
            environment=environment(device),
        )

    out.mkdir(parents=True, exist_ok=True)
    for number, checkpoint in enumerate(new):
        model = load_checkpoint(checkpoint.path, base, device, dtype)
        checkup = cheap_audit(model, reference, config, run.seed)
        del model
        gc.collect()  # one model in memory at a time
        points[checkpoint.step] = WatchPoint(
            checkpoint.step, checkup, str(checkpoint.path), fingerprints[checkpoint.step]
        )
        write_json(out / WATCH_NAME, series([c.step for c in new[: number + 1]]).to_dict())
    result = series([c.step for c in new])
    write_json(out / WATCH_NAME, result.to_dict())
    write_watch_report(result, out / PAGE_NAME)
    return result


def _reference(base, device, dtype, corpus, facts, data, config: WatchConfig, text_field: str) -> BaseReference:
    """The base's side, read once; the base is freed (on return) before any checkpoint loads."""
    model = load_model(base, device, dtype)
    return read_reference(model, load_tokenizer(base), corpus, facts, data, config, text_field)


def _deleted_since(points, found: list[Checkpoint]) -> list[WatchPoint]:
    """Earlier points whose checkpoint no longer exists (Trainer's `save_total_limit` deletes old
    ones) at a step no given checkpoint has: their record is all that is left of them."""
    steps = {c.step for c in found}
    return [p for p in points if p.step not in steps and p.checkpoint and not Path(p.checkpoint).exists()]
