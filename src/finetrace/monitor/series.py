"""The watch's record: one cheap audit per training step, written as `watch.json`, and the
fingerprints that let a rerun reuse what it already measured.

A series is keyed by a fingerprint of its settings, the base's weights, the corpus, the facts
and the fine-tuning data; each point by that key and its checkpoint's weights. A rerun reuses
a point only when both match, so new settings, another base or another corpus start afresh.
"""

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from finetrace._util.fingerprints import data_sha256, json_sha256
from finetrace._util.records import OtherVersion, Result, to_data
from finetrace._util.terminal import escape
from finetrace.errors import FinetraceError
from finetrace.gates import Gate, parse_gate
from finetrace.monitor.cheap import Checkup, WatchConfig
from finetrace.run import RunConfig

SCHEMA_VERSION = 3
WATCH_NAME, PAGE_NAME = "watch.json", "watch.html"
# Marked on the page when no --fail-on is given: the thresholds of the README's audit examples,
# and diff's significance level.
DEFAULT_GATES = tuple(parse_gate(condition) for condition in ("trace_p<0.01", "lost_fraction>0.05", "nll_change>0.1"))


@dataclass(frozen=True)
class WatchPoint:
    """The cheap audit at one training step."""

    step: int
    checkup: Checkup
    checkpoint: str | None = None  # None when a training callback audited the live model
    fingerprint: str | None = None  # the series key and the checkpoint's weights


@dataclass(frozen=True)
class GateCrossing:
    condition: str
    step: int | None  # the first step at which it holds; None: it never does


@dataclass(frozen=True)
class WatchSeries(Result):
    """Every checkpoint's cheap audit, by step; written as `watch.json`."""

    base: str
    corpus: str
    facts: str
    data: str | None  # the fine-tuning data the trace is tested against; None: untested
    config: WatchConfig
    run: RunConfig
    # Fingerprint of the settings, the base's weights, the corpus, the facts and the data; None
    # for a training callback's series, which no rerun resumes.
    key: str | None
    points: list[WatchPoint]
    gates: list[Gate]  # the --fail-on conditions; empty: the page marks DEFAULT_GATES instead
    audited: list[int]  # steps this run audited; the others were read from the previous watch.json
    environment: dict[str, str]
    schema_version: int = SCHEMA_VERSION
    derived = ("crossings", "failed")

    @property
    def crossings(self) -> list[GateCrossing]:
        """Where each gate (or each default mark) first holds."""
        return [GateCrossing(str(gate), first_crossing(gate, self.points)) for gate in self.gates or DEFAULT_GATES]

    @property
    def failed(self) -> bool:
        """A --fail-on condition held at some step."""
        return any(first_crossing(gate, self.points) is not None for gate in self.gates)


def first_crossing(gate: Gate, points: list[WatchPoint]) -> int | None:
    return next((point.step for point in points if gate.crossed(point.checkup.metrics)), None)


def series_key(
    base_weights: str,
    corpus: str | Path,
    facts: str | Path,
    data: str | Path | None,
    config: WatchConfig,
    run: RunConfig,
    device_type: str,
) -> str:
    """What decides every number of a series, except the checkpoint: two runs share points only
    when all of it matches (the device type too: kernels round differently)."""
    return json_sha256(
        {
            "base": base_weights,
            "corpus": data_sha256(corpus),
            "facts": data_sha256(facts),
            "data": data_sha256(data) if data is not None else None,
            "config": to_data(config),
            "run": {"dtype": run.dtype, "seed": run.seed, "text_field": run.text_field, "device": device_type},
        }
    )


def point_fingerprint(key: str, checkpoint_weights: str) -> str:
    return json_sha256({"series": key, "checkpoint": checkpoint_weights})


def previous_points(path: Path, key: str) -> dict[str, WatchPoint]:
    """The points of an earlier run of the same series, by fingerprint; none (and a note on the
    terminal) when `path` holds another series or another version's record. A damaged record is
    refused rather than overwritten: it may be the only record of deleted checkpoints."""
    if not path.exists():
        return {}
    try:
        previous = WatchSeries.read(path)
    except OtherVersion as error:
        _note(f"{error}; auditing every checkpoint afresh")
        return {}
    except FinetraceError as error:
        raise FinetraceError(f"{error}; move it away to watch afresh") from None
    if previous.key != key:
        _note(f"{path} holds another series (other settings, base, corpus, facts or data): auditing afresh")
        if gone := [p.step for p in previous.points if p.checkpoint and not Path(p.checkpoint).exists()]:
            kept = path.with_name(f"{path.stem}-{previous.key[:12]}{path.suffix}")
            path.rename(kept)  # its points of deleted checkpoints cannot be measured again
            _note(f"kept it as {kept}: it is the only record of the deleted checkpoints at steps {gone}")
        return {}
    return {point.fingerprint: point for point in previous.points if point.fingerprint}


def _note(message: str) -> None:
    Console(stderr=True).print(f"[yellow]{escape(message)}[/]", highlight=False)
