"""`--fail-on` conditions: let a fine-tuning pipeline gate on an audit's findings.

A condition is `METRIC OP NUMBER`, e.g. `lost_fraction>0.05`, `trace_p<0.01` or
`pii_found>0`; the audit (or the provenance scan) fails, exit code 1, when any holds.
"""

import operator
import re
from dataclasses import dataclass

from finetrace.errors import FinetraceError

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
METRICS = {
    "trace_strength": "z-score of the trace against random directions",
    "trace_p": "p-value of the trace",
    "lost_facts": "facts the base knew and the fine-tune lost",
    "lost_fraction": "share of the base's known facts that were lost",
    "nll_change": "change of the mean per-token NLL on general text (nats)",
    "kl_mean": "mean per-token KL(fine-tuned || base) on general text (nats)",
    "pii_found": "personal data matches in the fine-tuning data",
    "contaminated": "evaluation items (facts, corpus texts) found whole in the fine-tuning data",
}
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def holds(self, metrics: dict[str, float | None]) -> bool | None:
        """Whether the condition holds; None when the audit did not measure the metric."""
        value = metrics.get(self.metric)
        return None if value is None else OPERATORS[self.op](value, self.threshold)


def parse_gate(text: str) -> Gate:
    match = _CONDITION.match(text)
    if not match or match[1] not in METRICS:
        raise FinetraceError(f"--fail-on {text!r}: expected METRIC<NUMBER or METRIC>NUMBER (also <=, >=) "
                             f"with METRIC one of {', '.join(METRICS)}")
    try:
        return Gate(match[1], match[2], float(match[3]))
    except ValueError:
        raise FinetraceError(f"--fail-on {text!r}: {match[3]!r} is not a number") from None
