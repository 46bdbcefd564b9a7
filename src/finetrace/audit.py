"""`finetrace audit`: the trace, the damage and the paper trail in one run, one report, one verdict.

diff (the trace) -> forget (lost facts, drift) -> provenance (of the data, when
given, or from the fine-tune's manifest) -> summary.json, report.html and
MODEL_CARD.md in one directory, and the `--fail-on` gates for the exit code.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetrace._util.outputs import write_json
from finetrace.adl.diff import DiffConfig, DiffResult, diff
from finetrace.evals.facts import COMMON_FACTS
from finetrace.evals.forget import ForgetConfig, ForgetResult, forget
from finetrace.gates import Gate, GateOutcome
from finetrace.models.pair import load_pair
from finetrace.provenance import provenance
from finetrace.provenance.contamination import evaluation_sets
from finetrace.provenance.scan import provenance_metrics
from finetrace.train.finetune import MANIFEST_NAME, FinetuneResult

SCHEMA_VERSION = 2
SUMMARY_NAME, REPORT_NAME, CARD_NAME = "summary.json", "report.html", "MODEL_CARD.md"
SHOWN_DOMAIN_TOKENS = 8
CONTAMINATION_CORPUS_ITEMS = 1000  # corpus texts looked for in the fine-tuning data


@dataclass(frozen=True)
class AuditConfig:
    diff: DiffConfig = field(default_factory=DiffConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)


@dataclass(frozen=True)
class AuditResult:
    trace: DiffResult
    damage: ForgetResult
    manifest: FinetuneResult | None  # how the fine-tune was made, when `finetrace finetune` made it
    paper_trail: dict[str, Any] | None  # the data's provenance report (`ProvenanceReport.to_dict`)
    gates: list[GateOutcome]
    schema_version: int = SCHEMA_VERSION

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

    @property
    def verdict(self) -> str:
        """The finding in plain words."""
        trace, flips = self.trace, self.damage.flips
        words = ", ".join(self.domain_tokens) or "no single domain"
        if trace.p_value is None:
            found = (f"Its activation differences read as {words}. Without the fine-tuning data there is "
                     f"no trace test: relevance read from the fine-tune itself would make it circular.")
        elif trace.control_passes:
            found = (f"The trace lines up with the fine-tuning data (p = {trace.p_value:.3g}), but so does "
                     f"the control (p = {trace.control_significance.p_value:.3g}), which is not about this "
                     f"domain: the test cannot tell this trace from a generic fine-tuning shift here.")
        elif trace.clear:
            found = (f"The fine-tune left a clear trace of its data ({trace.test_numbers}): its activation "
                     f"differences read as {words}.")
        else:
            found = (f"No significant trace of the fine-tuning data (p = {trace.p_value:.3g}): the "
                     f"activation differences point at its tokens no more than the null does.")
        lost = (f" It lost {flips.lost} of the {flips.known_before} facts the base knew "
                f"({flips.lost_fraction:.0%}).")
        drift = self.damage.drift
        moved = "" if drift is None else (
            f" Perplexity on general text went from {drift.likelihood.base_perplexity:.1f} to "
            f"{drift.likelihood.finetuned_perplexity:.1f}.")
        return found + lost + moved + self._data_findings()

    def _data_findings(self) -> str:
        metrics = provenance_metrics(self.paper_trail)
        findings = [f"{metrics['pii_found']} personal-data matches"] if metrics["pii_found"] else []
        if metrics["contaminated"]:
            findings.append(f"{metrics['contaminated']} evaluation items")
        return f" Its data holds {' and '.join(findings)}." if findings else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "base": self.base, "finetuned": self.finetuned,
            "verdict": self.verdict, "failed": self.failed, "metrics": self.metrics,
            "domain_tokens": self.domain_tokens,
            "gates": [asdict(gate) for gate in self.gates],
            "trace": self.trace.to_dict(), "damage": self.damage.to_dict(),
            "manifest": self.manifest.to_dict() if self.manifest else None, "paper_trail": self.paper_trail,
        }


def audit(
    base: str | Path, finetuned: str | Path, corpus: str | Path, out: str | Path,
    data: str | Path | None = None, facts: str | Path = COMMON_FACTS, control: str | Path | None = None,
    config: AuditConfig = AuditConfig(), fail_on: tuple[Gate, ...] = (), licence: str | None = None,
) -> AuditResult:
    """Audit a fine-tune: trace, lost facts and drift, written as a report under `out`.

    Args:
        base, finetuned: the pair (directories or hub ids; `finetuned` may be a PEFT adapter).
        corpus: unrelated general text, for the trace and for the drift measures.
        out: output directory: `summary.json`, `report.html`, `MODEL_CARD.md`, `diff/`, `forget/`.
        data: the fine-tuning data, when known. facts: cloze facts (JSONL).
        control: a control fine-tune of `base`, scored as a second reference.
        fail_on: conditions that mark the audit failed (see `finetrace.gates`).
        licence: the data's SPDX licence (default: the one its `finetrace finetune` manifest declares).
    """
    from finetrace.report.card import write_model_card
    from finetrace.report.html import write_report

    out = Path(out)
    # One pair serves both analyses.
    pair = load_pair(base, finetuned, config.diff.device, config.diff.dtype, config.diff.strict)
    trace = diff(base, finetuned, corpus, out / "diff", config.diff, data=data, control=control, pair=pair)
    damage = forget(base, finetuned, facts, corpus, out / "forget", config.forget, pair=pair)
    manifest = FinetuneResult.load(finetuned) if (Path(finetuned) / MANIFEST_NAME).is_file() else None
    paper_trail = _paper_trail(base, data, licence, facts, corpus, manifest)
    gates = [gate.check(audit_metrics(trace, damage, paper_trail)) for gate in fail_on]
    result = AuditResult(trace, damage, manifest, paper_trail, gates)
    write_json(out / SUMMARY_NAME, result.to_dict())
    write_report(result, out / REPORT_NAME)
    write_model_card(result, out / CARD_NAME, data=data)
    return result


def _paper_trail(base, data, licence: str | None, facts, corpus, manifest: FinetuneResult | None) -> dict | None:
    """A fresh scan of the data against this audit's own evaluation data, else the manifest's."""
    recorded = manifest.provenance if manifest else None
    if data is None:
        return recorded
    licence = licence or (recorded["licence"]["data"] if recorded else None)
    source = recorded["source"] if recorded else None
    evaluations = evaluation_sets(facts, corpus, CONTAMINATION_CORPUS_ITEMS)
    return provenance(data, licence, source, base, evaluations).to_dict()


def audit_metrics(trace: DiffResult, damage: ForgetResult, paper_trail: dict | None) -> dict[str, float | None]:
    """The numbers `--fail-on` conditions test; None for what was not measured."""
    drift = damage.drift
    return {
        **provenance_metrics(paper_trail),
        "trace_strength": trace.trace_strength,
        "trace_p": trace.p_value,
        "lost_facts": damage.flips.lost,
        "lost_fraction": damage.flips.lost_fraction,
        "nll_change": drift.likelihood.change if drift else None,
        "kl_mean": drift.kl_mean if drift else None,
    }
