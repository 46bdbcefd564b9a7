"""`watch.html`: a watch series on one self-contained page (inline CSS and SVG, no scripts).

Each metric against the training step, with its gate and the step where it first held, and
the logit-lens tokens step by step. It reads only the `WatchSeries` record, so the page can
be rebuilt from `watch.json` without a model. Every string from a model or a dataset goes
through Jinja's autoescaping.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from finetrace._util.outputs import write_text
from finetrace.gates import Gate
from finetrace.monitor.series import DEFAULT_GATES, WatchSeries, first_crossing
from finetrace.report.html import MARGIN, PLOT_HEIGHT, PLOT_WIDTH, page_template


@dataclass(frozen=True)
class Plotted:
    """A metric the page plots: where its value is, how to show it."""

    title: str
    value: str  # a key of `Checkup.metrics`, or a `Checkup` field
    shown: str  # format of one value


PLOTS = (
    Plotted("Trace strength: domain lens tokens beyond the null", "trace_strength", "{:+.1%}"),
    Plotted("Trace p-value", "trace_p", "{:.3g}"),
    Plotted("Difference norm at the first text position read, over the typical residual norm", "trace_norm", "{:.3f}"),
    Plotted("Known facts lost (share)", "lost_fraction", "{:.1%}"),
    Plotted("NLL change on held-out text (nats per token)", "nll_change", "{:+.3f}"),
    Plotted("Mean KL(fine-tuned ‖ base) on held-out text (nats)", "kl_mean", "{:.4f}"),
)


def write_watch_report(series: WatchSeries, path: Path) -> None:
    write_text(path, render_watch(series))


def render_watch(series: WatchSeries) -> str:
    gates = series.gates or list(DEFAULT_GATES)
    plots = [_plot(series, plotted, [g for g in gates if g.metric == plotted.value]) for plotted in PLOTS]
    return page_template("watch.html.j2").render(
        series=series,
        crossings=series.crossings,
        default_gates=not series.gates,
        plots=[plot for plot in plots if plot["points"]],
        lens_rows=_lens_rows(series),
        config=json.dumps({"run": asdict(series.run), "watch": asdict(series.config)}, indent=1),
    )


def _value(checkup, name: str) -> float | None:
    metrics = checkup.metrics
    return metrics[name] if name in metrics else getattr(checkup, name)


def _plot(series: WatchSeries, plotted: Plotted, gates: list[Gate]) -> dict:
    """A line of one metric over the steps, each gate's threshold dashed, and a marker where it first holds."""
    measured = [(p.step, v) for p in series.points if (v := _value(p.checkup, plotted.value)) is not None]
    if not measured:
        return {"points": []}
    steps = [step for step, _ in measured]
    values = [value for _, value in measured] + [gate.threshold for gate in gates]
    low, high = min(values + [0.0]), max(values + [0.0])
    span = (high - low) or 1.0
    left, right = min(steps), max(steps)

    def x(step: int) -> float:
        return MARGIN + (PLOT_WIDTH - 2 * MARGIN) * ((step - left) / (right - left) if right > left else 0.5)

    def y(value: float) -> float:
        return PLOT_HEIGHT - MARGIN - (PLOT_HEIGHT - 2 * MARGIN) * (value - low) / span

    thresholds = [{"y": y(gate.threshold), "label": str(gate)} for gate in gates]
    crossings = [
        {"x": x(step), "label": f"{gate} from step {step}"}
        for gate in gates
        if (step := first_crossing(gate, series.points)) is not None
    ]
    return {
        "title": plotted.title,
        "points": [
            {"x": x(step), "y": y(value), "title": f"step {step}: {plotted.shown.format(value)}"}
            for step, value in measured
        ],
        "line": " ".join(f"{x(step):.1f},{y(value):.1f}" for step, value in measured),
        "thresholds": thresholds,
        "crossings": crossings,
        "zero": y(0.0),
        "ticks": [{"x": x(step), "text": str(step)} for step in steps],
        "low": plotted.shown.format(low),
        "high": plotted.shown.format(high),
        "width": PLOT_WIDTH,
        "height": PLOT_HEIGHT,
        "margin": MARGIN,
    }


def _lens_rows(series: WatchSeries) -> list[dict]:
    """Each step's lens tokens, those not in the step before marked new (none at the first step)."""
    rows = []
    for point in series.points:
        shown = {t.token_id for t in point.checkup.lens}
        new = shown - rows[-1]["shown"] if rows else set()
        rows.append({"step": point.step, "tokens": point.checkup.lens, "shown": shown, "new": new})
    return rows
