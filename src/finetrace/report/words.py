"""The findings in plain words, as the report, the model card and the terminal say them."""

from finetrace.adl.records import DiffResult
from finetrace.gates import measured
from finetrace.results import AuditResult

TEST_SENTENCE = (
    "Is the part of the activation difference that is not a rescaling of the base model's mean "
    "activation aligned with the fine-tuning data's tokens more than a random direction would be?"
)


NOT_MEASURED = "not measured"


def shown(value: float | None, spec: str = "{:.3g}") -> str:
    """A number as finetrace writes it, or "not measured" where it is absent or not finite: a
    NaN read back from a record is never reported as a finding."""
    return spec.format(value) if measured(value) else NOT_MEASURED


def trace_test_numbers(trace: DiffResult) -> str | None:
    """The trace test's result, as every summary quotes it; None when it did not run."""
    if trace.significance is None:
        return None
    return f"p = {shown(trace.p_value)}, {shown(trace.trace_strength, '{:+.0%}')} domain tokens beyond the null"


def trace_finding(trace: DiffResult) -> str:
    """The trace test's outcome in a few words, with its numbers."""
    if trace.p_value is None:
        return "not tested (no fine-tuning data given)"
    if not measured(trace.p_value):
        return f"{NOT_MEASURED} (the test's p-value is {trace.p_value})"
    if trace.lens_blind:
        steered = _steered(trace)
        return f"no verdict: the lens test had nothing to count (p = {trace.p_value:.3g} is a tie-break)" + (
            f"; {steered}" if steered else ""
        )
    found = (
        "a clear trace of its data"
        if trace.clear
        else "a trace the control shows too"
        if trace.control_passes
        else "no significant trace of its data"
    )
    return f"{found} ({trace_test_numbers(trace)})"


def _steered(trace: DiffResult) -> str:
    """What steering says about the data, where it was compared with it: evidence, not a test."""
    similarity = trace.similarity or {}
    steered, unsteered = similarity.get("steered_to_data"), similarity.get("unsteered_to_data")
    if not (measured(steered) and measured(unsteered)):
        return ""
    moved = "moves the text toward the data" if steered > unsteered else "does not move the text toward the data"
    return f"steering {moved} (similarity {steered:.2f} against {unsteered:.2f} unsteered)"


def verdict(result: AuditResult) -> str:
    """The audit's finding: the trace, the facts lost, the drift and the data's problems."""
    trace, flips = result.trace, result.damage.flips
    words = ", ".join(result.domain_tokens) or "no single domain"
    if trace.p_value is None:
        found = (
            f"Its activation differences read as {words}. Without the fine-tuning data there is "
            f"no trace test: relevance read from the fine-tune itself would make it circular."
        )
    elif not measured(trace.p_value):
        found = f"The trace test was {NOT_MEASURED}: its p-value is {trace.p_value}, not a number it can report."
    elif trace.lens_blind:
        steered = _steered(trace)
        found = (
            f"The trace test cannot decide: the logit lens of the activation difference holds none of the "
            f"fine-tuning data's tokens, nor does that of most null draws, so its p-value ({trace.p_value:.3g}) "
            f"is a tie-break: a real model's lens can read word pieces of no domain where Patchscope and "
            f"steering read it."
        ) + (f" Here {steered}: evidence to read, not a calibrated test." if steered else "")
    elif trace.control_passes:
        found = (
            f"The trace lines up with the fine-tuning data (p = {trace.p_value:.3g}), but so does "
            f"the control (p = {trace.control_significance.p_value:.3g}), which is not about this "
            f"domain: the test cannot tell this trace from a generic fine-tuning shift here."
        )
    elif trace.clear:
        found = (
            f"The fine-tune left a clear trace of its data ({trace_test_numbers(trace)}): its activation "
            f"differences read as {words}."
        )
    else:
        found = (
            f"No significant trace of the fine-tuning data (p = {trace.p_value:.3g}): the "
            f"activation differences point at its tokens no more than the null does."
        )
    lost = (
        f" It lost {flips.lost} of the {flips.known_before} facts the base knew ({flips.lost_fraction:.0%})."
        if flips.known_before
        else f" The base knew none of the {flips.total} facts: knowledge loss {NOT_MEASURED}."
    )
    drift = result.damage.drift
    moved = (
        ""
        if drift is None
        else (
            f" Perplexity on general text went from {shown(drift.likelihood.base_perplexity, '{:.1f}')} to "
            f"{shown(drift.likelihood.finetuned_perplexity, '{:.1f}')}."
        )
    )
    return found + lost + moved + _behaviour_findings(result) + _data_findings(result)


def _behaviour_findings(result: AuditResult) -> str:
    behaviour = result.damage.behaviour
    rates = [
        f"{rate.after:.0%} of the {what} (the base: {rate.before:.0%}, p = {shown(rate.p_value)})"
        for rate, what in (
            (behaviour and behaviour.refusal, "requests it should refuse"),
            (behaviour and behaviour.over_refusal, "benign look-alikes"),
        )
        if rate
    ]
    return f" It refuses {' and '.join(rates)}." if rates else ""


def _data_findings(result: AuditResult) -> str:
    metrics = result.metrics
    findings = [f"{metrics['pii_found']} personal-data matches"] if metrics["pii_found"] else []
    if metrics["contaminated"]:
        findings.append(f"{metrics['contaminated']} evaluation items")
    return f" Its data holds {' and '.join(findings)}." if findings else ""
