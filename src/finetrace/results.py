"""The audit's record: the trace, the damage, the paper trail and the gates, written as
`summary.json` and read back by `finetrace report` to rebuild the report and the card."""

from dataclasses import dataclass

from finetrace._util.records import Result
from finetrace.adl.records import DiffResult
from finetrace.evals.records import ForgetResult
from finetrace.gates import Gate, GateOutcome
from finetrace.papertrail.scan import ProvenanceReport, provenance_metrics
from finetrace.spectra.records import WeightsResult
from finetrace.train.finetune import FinetuneResult

SCHEMA_VERSION = 8
SUMMARY_NAME, REPORT_NAME, CARD_NAME = "summary.json", "report.html", "MODEL_CARD.md"
SHOWN_DOMAIN_TOKENS = 8


@dataclass(frozen=True)
class AuditResult(Result):
    trace: DiffResult
    damage: ForgetResult
    manifest: FinetuneResult | None  # how the fine-tune was made, when `finetrace finetune` made it
    paper_trail: ProvenanceReport | None  # the data's provenance report
    fail_on: list[Gate]  # the `--fail-on` conditions
    weights: WeightsResult | None = None  # each weight matrix's change; None when not asked for
    schema_version: int = SCHEMA_VERSION
    derived = ("base", "finetuned", "gates", "failed", "metrics", "domain_tokens")

    @property
    def base(self) -> str:
        return self.trace.base

    @property
    def finetuned(self) -> str:
        return self.trace.finetuned

    @property
    def gates(self) -> list[GateOutcome]:
        """Each condition tested on the numbers this record holds: read back, a gate can only
        be what those numbers make it."""
        return [gate.check(self.metrics) for gate in self.fail_on]

    @property
    def failed(self) -> bool:
        return any(gate.holds for gate in self.gates)

    @property
    def domain_tokens(self) -> list[str]:
        """The relevant logit-lens tokens at the first text position read (past the attention
        sink): what the trace reads as (the top tokens, when there is no data to tell which are relevant)."""
        first = next((t for t in self.trace.traces if not t.sink and t.position != "BOS"), None)
        if first is None:
            return []
        shown = [t for t in first.lens_finetuned if t.relevant or first.relevant_fraction is None]
        return [t.token.strip() for t in shown][:SHOWN_DOMAIN_TOKENS]

    @property
    def metrics(self) -> dict[str, float | None]:
        """The numbers `--fail-on` conditions test; None for what was not measured."""
        drift, behaviour = self.damage.drift, self.damage.behaviour
        return {
            **provenance_metrics(self.paper_trail),
            "trace_strength": self.trace.trace_strength,
            "trace_p": self.trace.p_value,
            "lost_facts": self.damage.flips.lost,
            "lost_fraction": self.damage.flips.lost_fraction,
            "nll_change": drift.likelihood.change if drift else None,
            "kl_mean": drift.kl_mean if drift else None,
            "refusal_drop": behaviour.refusal_drop if behaviour else None,
            "over_refusal_rise": behaviour.over_refusal_rise if behaviour else None,
        }
