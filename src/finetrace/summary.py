"""Terminal summaries of results, with rich."""

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from finetrace.adl.decode import TokenScore
from finetrace.adl.diff import DiffResult

SHOWN_TOKENS = 12


def print_diff(console: Console, result: DiffResult) -> None:
    """Headline, per-position tokens and steering samples of a diff."""
    verdict = "a clear trace" if result.p_value < 0.01 else "a weak trace" if result.p_value < 0.05 else "no significant trace"
    console.print(f"[bold]{escape(result.finetuned)}[/] vs {escape(result.base)}: {verdict} "
                  f"(strength z = {result.trace_strength:.1f}, p = {result.p_value:.3g}, {result.texts} texts; "
                  f"relevance from {result.relevance_source})")
    if result.control_significance:
        control = result.control_significance
        console.print(f"control {escape(str(result.control))}: {control.relevant} relevant tokens "
                      f"(p = {control.p_value:.3g}) against {result.significance.relevant} here")
    table = Table(show_lines=False)
    for column in ("layer", "pos", "norm", "z", "p", "relevant", "logit lens (fine-tuned head)", "patchscope"):
        table.add_column(column)
    for trace in result.traces:
        relevant = f"{trace.relevant_fraction:.0%}"
        table.add_row(str(trace.layer), trace.position, f"{trace.norm:.2f}", f"{trace.significance.z:.1f}",
                      f"{trace.significance.p_value:.3f}", relevant, _tokens(trace.lens_finetuned),
                      _tokens(trace.patchscope.tokens))
    console.print(table)
    steering = result.steering
    note = "" if steering.any_coherent else " (no strength stayed coherent)"
    console.print(f"steering at strength {steering.chosen_strength}{note}:")
    for plain, steered in list(zip(steering.unsteered.generations, steering.steered))[:3]:
        console.print(f"  [dim]unsteered[/] {escape(plain.prompt + plain.text)!r}")
        console.print(f"  [green]steered[/]   {escape(steered.prompt + steered.text)!r}")
    if result.similarity:
        s = result.similarity
        console.print(f"similarity to the fine-tuning data: steered {s['steered_to_data']:.3f}, "
                      f"unsteered {s['unsteered_to_data']:.3f}")


def _tokens(tokens: list[TokenScore]) -> str:
    return escape(" ".join(repr(t.token.strip()) if not t.token.strip().isalnum() else t.token.strip()
                           for t in tokens[:SHOWN_TOKENS]))
