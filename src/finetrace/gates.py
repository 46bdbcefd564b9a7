"""`--fail-on` conditions: let a fine-tuning pipeline gate on an audit's findings.

A condition is `METRIC OP NUMBER`, e.g. `lost_fraction>0.05`, `trace_p<0.01` or
`pii_found>0`; the audit (or the provenance scan, or the comparison of two benchmark
runs) fails, exit code 1, when any holds.
A metric that was not measured, or is not a finite number (NaN from a broken model, an
infinite perplexity), never passes a gate: the gate fails and says why.
"""

import math
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass

from finetrace.errors import FinetraceError

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
METRICS = {
    "trace_strength": "share of the trace's lens tokens that are domain tokens beyond the null",
    "trace_p": "p-value of the trace",
    "lost_facts": "facts the base knew and the fine-tune lost",
    "lost_fraction": "share of the base's known facts that were lost",
    "nll_change": "change of the mean per-token NLL on general text (nats)",
    "kl_mean": "mean per-token KL(fine-tuned || base) on general text (nats)",
    "refusal_drop": "largest drop, in any category, of the refusal rate on requests to refuse (0.5 = 50 points)",
    "over_refusal_rise": "largest rise, in any category, of the refusal rate on benign look-alikes (0.5 = 50 points)",
    "pii_found": "personal data matches in the fine-tuning data",
    "contaminated": "evaluation items (facts, corpus texts) found whole in the fine-tuning data",
    "benchmark_drop": "largest drop, in any task of two lm-eval runs, of the accuracy (0.02 = 2 points)",
}
# What a gate may test where less than a whole audit runs.
WATCH_METRICS = ("trace_strength", "trace_p", "lost_facts", "lost_fraction", "nll_change", "kl_mean")  # a checkpoint
PROVENANCE_METRICS = ("pii_found", "contaminated")  # a provenance scan
# What another command measures and an audit does not: two lm-eval runs compared (compare-evals).
BENCHMARK_METRICS = ("benchmark_drop",)
AUDIT_METRICS = tuple(name for name in METRICS if name not in BENCHMARK_METRICS)
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


def measured(value: float | None) -> bool:
    """A number that was measured: present and finite (NaN is no finding, and compares false)."""
    return value is not None and math.isfinite(value)


@dataclass(frozen=True)
class GateOutcome:
    condition: str
    holds: bool  # True fails the run
    reason: str = ""  # why a gate failed although its condition could not be tested


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def __post_init__(self) -> None:  # a gate read back from a record is checked like a typed one
        if self.metric not in METRICS or self.op not in OPERATORS or not math.isfinite(self.threshold):
            raise FinetraceError(
                f"{self} is not a gate: expected METRIC<NUMBER with METRIC one of {', '.join(METRICS)}"
            )

    def holds(self, metrics: dict[str, float | None]) -> bool:
        """Whether the gate fails the run: its condition holds, or the metric was not measured or
        is not a finite number (a comparison with NaN is always false: it would pass every gate)."""
        value = metrics.get(self.metric)
        return not measured(value) or OPERATORS[self.op](value, self.threshold)

    def crossed(self, metrics: dict[str, float | None]) -> bool:
        """Whether the condition holds at one step of a series: as `holds`, but a metric the
        series does not measure marks no step (a watch refuses such a gate before it starts)."""
        return metrics.get(self.metric) is not None and self.holds(metrics)

    def check(self, metrics: dict[str, float | None]) -> GateOutcome:
        """`holds`, with the reason when the metric could not be compared."""
        value = metrics.get(self.metric)
        reason = (
            f"{self.metric} was not measured, so it passes no gate"
            if value is None
            else f"{self.metric} is {value}, which passes no gate"
            if not math.isfinite(value)
            else ""
        )
        return GateOutcome(str(self), self.holds(metrics), reason)


def parse_gate(text: str, measured: Iterable[str] = METRICS) -> Gate:
    """A condition such as `lost_fraction>0.05`; `measured` are the metrics the command computes."""
    measured = tuple(measured)
    match = _CONDITION.match(text)
    if not match or match[1] not in METRICS:
        raise FinetraceError(
            f"--fail-on {text!r}: expected METRIC<NUMBER or METRIC>NUMBER (also <=, >=) "
            f"with METRIC one of {', '.join(measured)}"
        )
    if match[1] not in measured:
        raise FinetraceError(
            f"--fail-on {text!r}: this command does not measure {match[1]}; gate on one of {', '.join(measured)}"
        )
    try:
        threshold = float(match[3])
    except ValueError:
        raise FinetraceError(f"--fail-on {text!r}: {match[3]!r} is not a number") from None
    if not math.isfinite(threshold):
        raise FinetraceError(f"--fail-on {text!r}: the threshold must be a finite number")
    return Gate(match[1], match[2], threshold)
