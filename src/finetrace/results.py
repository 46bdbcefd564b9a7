"""The audit's record: the trace, the damage, the paper trail and the gates, written as
`summary.json` and read back by `finetrace report` to rebuild the report and the card."""

from dataclasses import dataclass

from finetrace._util.records import Result
from finetrace.adl.diff import DiffResult
from finetrace.evals.forget import ForgetResult
from finetrace.gates import GateOutcome
from finetrace.provenance.scan import ProvenanceReport, provenance_metrics
from finetrace.train.finetune import FinetuneResult

SCHEMA_VERSION = 4
SUMMARY_NAME, REPORT_NAME, CARD_NAME = "summary.json", "report.html", "MODEL_CARD.md"
SHOWN_DOMAIN_TOKENS = 8


@dataclass(frozen=True)
class AuditResult(Result):
    trace: DiffResult
    damage: ForgetResult
    manifest: FinetuneResult | None  # how the fine-tune was made, when `finetrace finetune` made it
    paper_trail: ProvenanceReport | None  # the data's provenance report
    gates: list[GateOutcome]
    schema_version: int = SCHEMA_VERSION
    derived = ("base", "finetuned", "failed", "metrics", "domain_tokens")

    @property
    def base(self) -> str:
        return self.trace.base

    @property
    def finetuned(self) -> str:
        return self.trace.finetuned

    @property
    def failed(self) -> bool:
        return any(gate.holds for gate in self.gates)

    @property
    def domain_tokens(self) -> list[str]:
        """The relevant logit-lens tokens at the first text position: what the trace reads as
        (the top tokens, when there is no data to tell which are relevant)."""
        first = next(t for t in self.trace.traces if t.position == "0")
        shown = [t for t in first.lens_finetuned if t.relevant or first.relevant_fraction is None]
        return [t.token.strip() for t in shown][:SHOWN_DOMAIN_TOKENS]

    @property
    def metrics(self) -> dict[str, float | None]:
        return audit_metrics(self.trace, self.damage, self.paper_trail)


def audit_metrics(
    trace: DiffResult, damage: ForgetResult, paper_trail: ProvenanceReport | None
) -> dict[str, float | None]:
    """The numbers `--fail-on` conditions test; None for what was not measured."""
    drift, behaviour = damage.drift, damage.behaviour
    return {
        **provenance_metrics(paper_trail),
        "trace_strength": trace.trace_strength,
        "trace_p": trace.p_value,
        "lost_facts": damage.flips.lost,
        "lost_fraction": damage.flips.lost_fraction,
        "nll_change": drift.likelihood.change if drift else None,
        "kl_mean": drift.kl_mean if drift else None,
        "refusal_drop": behaviour.refusal_drop if behaviour else None,
        "over_refusal_rise": behaviour.over_refusal_rise if behaviour else None,
    }
