"""`MODEL_CARD.md`: the audit's findings as a Hugging Face model-card section.

The metadata (`base_model`, `base_model_relation`, `datasets`, `model-index`
evaluation results) is built with `huggingface_hub`'s card classes and checked by
parsing the written card back.
"""

import html
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from finetrace._util.outputs import write_text
from finetrace._util.terminal import visible_controls
from finetrace.errors import FinetraceError
from finetrace.evals.behaviour import BehaviourResult
from finetrace.papertrail.scan import ProvenanceReport
from finetrace.report.words import shown, trace_test_numbers, verdict
from finetrace.results import AuditResult

TASK = "text-generation"
# Characters that start Markdown inline syntax (emphasis, code, links, images, tables);
# `<`, `>` and `&` are HTML-escaped instead.
_MARKDOWN_SYNTAX = re.compile(r"[\\`*_{}\[\]()#+!|~]")


def write_model_card(result: AuditResult, path: Path) -> ModelCard:
    card = model_card(result)
    write_text(path, str(card))
    if ModelCard.load(path).data.to_dict() != card.data.to_dict():
        raise FinetraceError(f"{path}: the model card's metadata does not survive a round trip")
    return card


def model_card(result: AuditResult) -> ModelCard:
    trace, damage, data = result.trace, result.damage, result.trace.data
    # (dataset type, dataset, metric type, metric name, value): one model-index result each
    rows = [
        (
            "finetrace-facts",
            damage.facts_source,
            "accuracy",
            "facts known",
            round(damage.flips.known_after / damage.flips.total, 4),
        )
    ]
    if trace.significance:
        rows.append(
            ("finetrace-trace", trace.corpus, "p-value", "activation-difference trace test", round(trace.p_value, 4))
        )
    if damage.drift:
        perplexity = damage.drift.likelihood.finetuned_perplexity
        rows.append(("finetrace-general-text", str(damage.corpus), "perplexity", None, round(perplexity, 3)))
    behaviour = damage.behaviour
    for rate, name in (
        (behaviour and behaviour.refusal, "refusal rate"),
        (behaviour and behaviour.over_refusal, "over-refusal rate"),
    ):
        if rate:
            rows.append(("finetrace-behaviour", behaviour.source, "refusal rate", name, round(rate.after, 4)))
    evals = [
        EvalResult(
            task_type=TASK,
            dataset_type=kind,
            dataset_name=Path(source).name,
            metric_type=metric,
            metric_name=name,
            metric_value=value,
        )
        for kind, source, metric, name, value in rows
    ]
    # Hub metadata names hub datasets; a local file is described in the text instead.
    datasets = [str(data)] if data is not None and not Path(data).exists() else None
    # A fine-tune inherits its base's licence; the data's own terms are in the text.
    licence = result.paper_trail.licence.base if result.paper_trail else None
    metadata = ModelCardData(
        model_name=Path(result.finetuned).name,
        base_model=result.base,
        base_model_relation="adapter" if trace.adapter else "finetune",
        datasets=datasets,
        eval_results=evals,
        tags=["finetrace"],
        license=licence.lower() if licence else None,
    )
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{_body(result)}")


def markdown_text(text: object) -> str:
    """A string from a model, a dataset or a user, as inert Markdown: one line, HTML escaped
    (the hub renders cards as HTML) and Markdown's inline syntax backslash-escaped."""
    flat = " ".join(visible_controls(str(text)).split())
    return html.escape(_MARKDOWN_SYNTAX.sub(r"\\\g<0>", flat), quote=False)


def _body(result: AuditResult) -> str:
    trace, flips, drift, data = result.trace, result.damage.flips, result.damage.drift, result.trace.data
    adapter = " as a LoRA adapter" if trace.adapter else ""
    tokens = ", ".join(markdown_text(token) for token in result.domain_tokens) or "none"
    lines = [
        f"# Audit of {markdown_text(Path(result.finetuned).name)}",
        "",
        f"Fine-tuned from {markdown_text(result.base)}{adapter}. Audited with finetrace.",
        "",
        f"**Verdict.** {markdown_text(verdict(result))}",
        "",
        "## What the fine-tune was about",
        "",
        "- Trace test against the fine-tuning data: "
        + (trace_test_numbers(trace) or "not run (the audit was not given the fine-tuning data)"),
        f"- Domain tokens read from the activation differences: {tokens}",
        f"- Fine-tuning data: {markdown_text(data) if data is not None else 'not given'}",
        "",
        "## What it cost",
        "",
        f"- Facts: {flips.kept} kept, {flips.lost} lost, {flips.gained} gained, {flips.never} never known "
        f"(exact McNemar p = {flips.p_value:.3g})",
    ]
    if drift:
        nll = drift.likelihood
        lines.append(
            f"- General text: perplexity {shown(nll.base_perplexity, '{:.2f}')} -> "
            f"{shown(nll.finetuned_perplexity, '{:.2f}')} "
            f"(NLL change {nll.change:+.3f} nats/token, "
            f"95% interval [{nll.ci_low:+.3f}, {nll.ci_high:+.3f}]); "
            f"mean KL(fine-tuned || base) {drift.kl_mean:.4f} nats/token"
        )
    if result.damage.behaviour:
        lines += _behaviour_lines(result.damage.behaviour)
    if spectra := result.weights:
        lines.append(
            f"- Weights: {spectra.intruders} intruder dimensions in {len(spectra.matrices)} matrices "
            f"(top {spectra.config.top_k} singular vectors, |cosine| < {spectra.config.threshold:g}); "
            f"mean relative change {spectra.mean_relative_change:.4f}"
        )
    if result.paper_trail:
        lines += ["", *_data_lines(result.paper_trail)]
    return "\n".join(lines) + "\n"


def _behaviour_lines(behaviour: BehaviourResult) -> list[str]:
    """The refusal rates, the gates' two numbers and the prompts that flipped."""
    lines = []
    for rate, what in (
        (behaviour.refusal, "requests that should be refused"),
        (behaviour.over_refusal, "benign look-alikes"),
    ):
        if rate:
            low, high = rate.change_interval
            lines.append(
                f"- Refused {what}: {rate.before:.0%} -> {rate.after:.0%} of {rate.flips.total} "
                f"(change {100 * rate.change:+.0f} points, {rate.confidence:.0%} interval "
                f"[{100 * low:+.0f}, {100 * high:+.0f}]; "
                f"exact McNemar p = {shown(rate.p_value)})"
            )
    worst = [
        f"{name} {value:+.0%}"
        for name, value in (
            ("refusal drop", behaviour.refusal_drop),
            ("over-refusal rise", behaviour.over_refusal_rise),
        )
        if value is not None
    ]
    lines.append(
        f"- Largest change in one category ({len(behaviour.by_category)} categories from "
        f"{markdown_text(Path(behaviour.source).name)}): {', '.join(worst)}; {len(behaviour.flipped)} prompts flipped"
    )
    return lines


def _data_lines(report: ProvenanceReport) -> list[str]:
    licence, pii, duplicates = report.licence, report.pii, report.duplicates
    found = ", ".join(f"{kind} {n}" for kind, n in pii.counts.items() if n) or "none"
    lines = [
        "## Training data",
        "",
        f"- {report.records} records, {report.bytes} bytes; content sha256 `{report.content_sha256}`"
        + (f"; source: {markdown_text(report.source)}" if report.source else ""),
        *[f"  - {markdown_text(Path(f.path).name)}: sha256 `{f.sha256}`, {f.records} records" for f in report.files],
        f"- Licence: {markdown_text(licence.data or 'not declared')} "
        f"(base model: {markdown_text(licence.base or 'unknown')})",
        *[f"  - warning: {markdown_text(warning)}" for warning in licence.warnings],
        f"- Personal data found: {pii.total} matches in {pii.records} records ({found})",
        f"- Duplicates: {duplicates.exact} exact, {duplicates.near} near",
    ]
    lines += [
        f"- Overlap with {markdown_text(o.name)}: {o.contained} of {o.items} items contained, {o.overlapping} partly"
        for o in report.contamination
    ]
    return lines
