"""Terminal summaries of results, with rich."""

import math

from rich.console import Console
from rich.table import Table

from finetrace._util.terminal import escape
from finetrace.adl.amplify import AmplifiedSample, AmplifiedSampling, Rate, shows_domain
from finetrace.adl.decode import TokenScore
from finetrace.adl.records import DiffResult
from finetrace.evals.behaviour import Answer, BehaviourResult
from finetrace.evals.rates import RateChange
from finetrace.evals.records import ForgetResult
from finetrace.monitor.series import WatchSeries
from finetrace.papertrail.scan import ProvenanceReport
from finetrace.report.words import shown, trace_finding, verdict
from finetrace.results import AuditResult
from finetrace.spectra.records import WeightsResult

SHOWN_TOKENS = 12
SHOWN_FACTS = 5
WATCH_TOKENS = 6  # a step's row stays one line on a terminal
SHOWN_SAMPLES = 2  # examples per strength
SHOWN_DOMAIN_TOKENS = 20


def print_diff(console: Console, result: DiffResult) -> None:
    """Headline, per-position tokens and steering samples of a diff."""
    console.print(
        f"[bold]{escape(result.finetuned)}[/] vs {escape(result.base)}: {trace_finding(result)} ({result.texts} texts)"
    )
    if result.control_significance:
        control = result.control_significance
        console.print(
            f"control {escape(str(result.control))}: {control.relevant} relevant tokens "
            f"(p = {control.p_value:.3g}) against {result.significance.relevant} here"
        )
    table = Table(show_lines=False)
    for column in ("layer", "pos", "norm", "p", "relevant", "logit lens (fine-tuned head)", "patchscope"):
        table.add_column(column)
    for trace in result.traces:
        relevant = "" if trace.relevant_fraction is None else f"{trace.relevant_fraction:.0%}"
        p_value = "" if trace.significance is None else f"{trace.significance.p_value:.3f}"
        position = trace.position + (" (sink)" if trace.sink else "")
        table.add_row(
            str(trace.layer),
            escape(position),
            f"{trace.norm:.2f}",
            p_value,
            relevant,
            _tokens(trace.lens_finetuned),
            _tokens(trace.patchscope.tokens),
        )
    console.print(table)
    steering = result.steering
    note = "" if steering.any_coherent else " (no strength stayed coherent)"
    console.print(f"steering at strength {steering.chosen_strength}{note}:")
    for plain, steered in list(zip(steering.unsteered.generations, steering.steered, strict=False))[:3]:
        console.print(f"  [dim]unsteered[/] {_quoted(plain.prompt + plain.text)}")
        console.print(f"  [green]steered[/]   {_quoted(steered.prompt + steered.text)}")
    if result.similarity:
        s = result.similarity
        console.print(
            f"similarity to the fine-tuning data: steered {s['steered_to_data']:.3f}, "
            f"unsteered {s['unsteered_to_data']:.3f}"
        )
    laps = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in result.seconds.items())
    console.print(f"[dim]seconds: {laps}[/]")


def print_audit(console: Console, result: AuditResult) -> None:
    """Both analyses, then the verdict and the gates."""
    print_diff(console, result.trace)
    print_forget(console, result.damage)
    if result.weights:
        print_weights(console, result.weights)
    if result.paper_trail:
        print_provenance(console, result.paper_trail)
    console.print(f"\n[bold]verdict:[/] {escape(verdict(result))}")
    for gate in result.gates:
        state = (
            "does not hold"
            if not gate.holds
            else f"[red]fails: {escape(gate.reason)}[/]"
            if gate.reason
            else "[red]holds: audit failed[/]"
        )
        console.print(f"  --fail-on {escape(gate.condition)}: {state}")


def print_weights(console: Console, result: WeightsResult) -> None:
    """Per kind of matrix: the mean relative change, the change's median effective rank, and the
    intruder dimensions over the layers."""
    config = result.config
    console.print(
        f"[bold]{escape(result.finetuned)}[/] vs {escape(result.base)}: {result.intruders} intruder dimensions "
        f"in {len(result.matrices)} matrices (top {config.top_k} singular vectors, |cosine| < {config.threshold:g})"
    )
    table = Table()
    table.add_column("matrix", no_wrap=True)
    for column in ("layers", "relative change", "rank of change", "intruders", "in layers"):
        table.add_column(column)
    for module, count in result.intruders_by_module.items():
        matrices = [m for m in result.matrices if m.module == module]
        ranks = sorted(m.effective_rank for m in matrices)
        layers = sorted({m.layer for m in matrices if m.intruders})
        table.add_row(
            escape(module),
            str(len(matrices)),
            f"{sum(m.relative_change for m in matrices) / len(matrices):.4f}",
            f"{ranks[len(ranks) // 2]:.1f}",
            str(count),
            ", ".join(map(str, layers)) or "-",
        )
    console.print(table)


def print_forget(console: Console, result: ForgetResult) -> None:
    """Flip matrices, the facts lost, and the drift on general text."""
    flips = result.flips
    console.print(
        f"[bold]{escape(result.finetuned)}[/] vs {escape(result.base)}: lost {flips.lost} of the "
        f"{flips.known_before} facts the base knew ({shown(flips.lost_fraction, '{:.0%}')}), gained {flips.gained} "
        f"(McNemar p = {flips.p_value:.3g}; {flips.total} facts from {escape(result.facts_source)})"
    )
    table = Table()
    for column in ("category", "kept", "lost", "gained", "never known", "p"):
        table.add_column(column)
    for name, m in {**result.by_category, "all": flips}.items():
        table.add_row(escape(name), str(m.kept), str(m.lost), str(m.gained), str(m.never), f"{m.p_value:.3g}")
    console.print(table)
    for change in result.lost[:SHOWN_FACTS]:
        console.print(
            f"  lost: {escape(change.fact.prompt)} [bold]{escape(change.fact.answer)}[/] "
            f"(p {math.exp(change.base.answer_logprob):.2f} -> "
            f"{math.exp(change.finetuned.answer_logprob):.2f})"
        )
    if result.behaviour:
        print_behaviour(console, result.behaviour)
    drift = result.drift
    if drift is None:
        console.print("general-text drift not measured: give a held-out corpus with --corpus")
        return
    nll = drift.likelihood
    console.print(
        f"general text ({nll.texts} texts, {nll.tokens} tokens): NLL {nll.base_nll:.3f} -> "
        f"{nll.finetuned_nll:.3f} per token, change {nll.change:+.3f} "
        f"[{nll.ci_low:+.3f}, {nll.ci_high:+.3f}]; perplexity {nll.base_perplexity:.1f} -> "
        f"{nll.finetuned_perplexity:.1f}; mean KL(fine-tuned || base) {drift.kl_mean:.4f} nats"
    )
    for name, change in drift.by_source.items():
        console.print(
            f"  {escape(name)}: NLL change {change.change:+.3f} [{change.ci_low:+.3f}, {change.ci_high:+.3f}]"
        )
    for span in drift.regressed_spans[:3]:
        console.print(f"  regressed ({span.score:+.2f} nats/token): ...{_quoted(span.context)} -> {_quoted(span.text)}")


def _answer_words(answer: Answer) -> str:
    """The greedy answer and both refusal estimates: a greedy refusal may still be the rarer answer."""
    return (
        f"{_quoted(answer.text)} (refusals {answer.rule_share:.0%} of answers, "
        f"refusal opening p {answer.opening_probability:.2f})"
    )


def print_behaviour(console: Console, result: BehaviourResult) -> None:
    """Refusal and over-refusal rates per category, and the prompts that flipped."""
    console.print(
        f"behaviour on {len(result.prompts)} chat prompts from {escape(result.source)}: refusals "
        f"{_rate_words(result.refusal)}; over-refusals {_rate_words(result.over_refusal)}"
    )
    table = Table()
    for column in ("category", "refused (should)", "p", "refused (look-alikes)", "p"):
        table.add_column(column)
    for name, c in result.by_category.items():
        cells = [(_rate_cell(r), f"{r.p_value:.3g}") if r else ("", "") for r in (c.refusal, c.over_refusal)]
        table.add_row(escape(name), *cells[0], *cells[1])
    console.print(table)
    if result.openings:
        means = "; ".join(
            f"{'requests' if expect == 'refuse' else 'look-alikes'} {before:.3f} -> {after:.3f}"
            for expect, (before, after) in result.opening_probabilities.items()
        )
        console.print(f"  probability of a refusal opening ({len(result.openings)} learned from the base): {means}")
    for change in result.flipped[:SHOWN_FACTS]:
        lost = "refusal lost" if change.base.refused else "new refusal"
        console.print(
            f"  {lost}: {_quoted(change.prompt.prompt)} base {_answer_words(change.base)} "
            f"-> fine-tune {_answer_words(change.finetuned)}"
        )
    if result.endpoint_failures:
        console.print(
            f"  [yellow]warning:[/] the judge endpoint gave no verdict on {result.endpoint_failures} answers "
            f"(judged locally)"
        )


def print_sample(console: Console, result: AmplifiedSampling) -> None:
    """Per strength, the rates with their intervals; then a few samples of each, those that show
    the behaviour first."""
    config = result.config
    console.print(
        f"[bold]{escape(result.finetuned)}[/] amplified against {escape(result.base)}: "
        f"{len(result.strengths[0].samples)} samples per strength, {config.max_new_tokens} new tokens, "
        f"temperature {config.temperature:g}"
    )
    rates = {"domain": result.data is not None, "target": bool(result.targets)}
    if rates["domain"]:
        words = " ".join(repr(word.strip()) for word in result.domain_tokens[:SHOWN_DOMAIN_TOKENS])
        console.print(
            f"domain: {len(result.domain_tokens)} tokens of {escape(result.data)}, e.g. {escape(words)}; "
            f"a sample shows it with at least {config.min_domain_tokens} of them"
        )
    if rates["target"]:
        console.print(f"target: any of {escape(', '.join(map(repr, result.targets)))}, in any case")
    table = Table()
    table.add_column("a")
    for name in (name for name, measured in rates.items() if measured):
        table.add_column(name)
        table.add_column(f"{config.confidence:.0%} interval")
    for strength in result.strengths:
        cells = [_rate_cells(rate) for rate in (strength.domain, strength.target) if rate is not None]
        table.add_row(f"{strength.strength:g}", *(cell for pair in cells for cell in pair))
    console.print(table)
    for strength in result.strengths:
        shown = sorted(strength.samples, key=lambda sample: not _shows(sample, config.min_domain_tokens))
        for sample in shown[:SHOWN_SAMPLES]:
            console.print(f"  a = {strength.strength:g}: {_quoted(sample.prompt)} -> {_quoted(sample.text)}")


def _shows(sample: AmplifiedSample, min_domain_tokens: int) -> bool:
    return bool(sample.targets) or shows_domain(sample, min_domain_tokens)


def _rate_cells(rate: Rate) -> tuple[str, str]:
    low, high = rate.interval
    return f"{rate.rate:.0%} ({rate.hits} of {rate.samples})", f"[{low:.0%}, {high:.0%}]"


def _rate_words(rate: RateChange | None) -> str:
    if rate is None:
        return "not measured (no such prompts)"
    low, high = rate.change_interval
    return (
        f"{_rate_cell(rate)} (change {rate.change:+.0%}, {rate.confidence:.0%} interval [{low:+.0%}, {high:+.0%}], "
        f"McNemar p = {rate.p_value:.3g})"
    )


def _rate_cell(rate: RateChange) -> str:
    return f"{rate.before:.0%} -> {rate.after:.0%}"


def print_provenance(console: Console, report: ProvenanceReport) -> None:
    """Files, licence, duplicates, PII and contamination of a provenance report."""
    console.print(
        f"[bold]{escape(report.data)}[/]: {report.records} records, {report.bytes / 1e6:.1f} MB "
        f"in {len(report.files)} file(s); content sha256 {report.content_sha256[:16]}…"
    )
    licence = report.licence
    console.print(
        f"licence: {escape(str(licence.data or 'not declared'))} (base model: {escape(str(licence.base or 'unknown'))})"
    )
    for warning in licence.warnings:
        console.print(f"  [yellow]warning:[/] {escape(warning)}")
    duplicates = report.duplicates
    console.print(f"duplicates: {duplicates.exact} exact, {duplicates.near} near")
    for pair in (duplicates.exact_examples + duplicates.near_examples)[:3]:
        console.print(f"  {escape(pair.record)} repeats {escape(pair.first)}")
    pii = report.pii
    found = ", ".join(f"{kind} {count}" for kind, count in pii.counts.items() if count) or "none"
    console.print(f"personal data: {pii.total} matches in {pii.records} records ({found})")
    for example in pii.examples[:SHOWN_FACTS]:
        console.print(f"  {escape(example.record)} {escape(example.kind)}: {escape(example.context)}")
    for overlap in report.contamination:
        console.print(
            f"evaluation overlap with {escape(overlap.name)}: {overlap.contained} of {overlap.items} "
            f"items contained, {overlap.overlapping} partly"
        )
    if report.redacted:
        console.print(f"redacted copy: {escape(report.redacted)}")


def print_watch(console: Console, series: WatchSeries) -> None:
    """Each step's cheap audit, and the step where each gate (or default mark) first held."""
    table = Table(title=f"finetrace watch: {len(series.points)} checkpoints, {len(series.audited)} audited now")
    for column in ("step", "trace strength", "p", "facts lost", "NLL change", "KL", "logit lens (first read)", "s"):
        table.add_column(column)
    for point in series.points:
        c = point.checkup
        table.add_row(
            str(point.step),
            "not tested" if c.trace_strength is None else f"{c.trace_strength:+.1%}",
            "" if c.trace_p is None else f"{c.trace_p:.3g}",
            f"{c.lost_facts}/{c.known_facts}",
            f"{c.nll_change:+.3f}",
            f"{c.kl_mean:.4f}",
            _tokens(c.lens[:WATCH_TOKENS]),
            f"{c.seconds:.1f}" if point.step in series.audited else "reused",
        )
    console.print(table)
    marks = "" if series.gates else " (default marks; --fail-on sets gates)"
    for crossing in series.crossings:
        where = "never holds" if crossing.step is None else f"first holds at step {crossing.step}"
        console.print(f"{escape(crossing.condition)}: {where}{marks}")


def _quoted(text: str) -> str:
    """A model's or a dataset's text, quoted and escaped: repr first, so that escaping's
    backslashes are not doubled into markup again."""
    return escape(repr(text))


def _tokens(tokens: list[TokenScore]) -> str:
    return escape(
        " ".join(
            repr(t.token.strip()) if not t.token.strip().isalnum() else t.token.strip() for t in tokens[:SHOWN_TOKENS]
        )
    )
