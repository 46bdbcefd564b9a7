"""Reports of an audit: a self-contained HTML page, a model-card section, the terminal summary."""

from pathlib import Path

from finetrace.report.card import write_model_card
from finetrace.report.html import write_report
from finetrace.results import CARD_NAME, REPORT_NAME, AuditResult


def write_reports(result: AuditResult, out: str | Path) -> None:
    """`report.html` and `MODEL_CARD.md` of an audit, under `out` (made if need be)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    write_report(result, Path(out) / REPORT_NAME)
    write_model_card(result, Path(out) / CARD_NAME)
