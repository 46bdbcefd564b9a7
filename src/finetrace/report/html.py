"""`report.html`: one self-contained page (inline CSS and SVG, no scripts, no network).

Every string that came from a model or a dataset goes through Jinja's autoescaping.
"""

import json
import math
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, Template, select_autoescape

from finetrace._util.outputs import write_text
from finetrace.gates import measured
from finetrace.report.words import NOT_MEASURED, TEST_SENTENCE, shown, verdict
from finetrace.results import AuditResult

PLOT_WIDTH, PLOT_HEIGHT, MARGIN = 560, 180, 32


def write_report(result: AuditResult, path: Path) -> None:
    write_text(path, render_report(result))


def page_template(name: str) -> Template:
    """A page template of this package, every value autoescaped, with the report's filters."""
    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    environment.filters["shade"] = _shade
    environment.filters["exp"] = math.exp
    environment.filters["shown"] = shown
    environment.filters["format"] = _format
    return environment.from_string((files("finetrace.report") / name).read_text())


def _format(spec: str, *values: object) -> str:
    """Jinja's `format`, with "not measured" for a number that is not finite (read back from a
    record, a NaN is no finding)."""
    if not all(measured(value) for value in values if isinstance(value, float)):
        return NOT_MEASURED
    return spec % values


def render_report(result: AuditResult) -> str:
    template = page_template("report.html.j2")
    trace = result.trace
    return template.render(
        result=result,
        verdict=verdict(result),
        trace=trace,
        damage=result.damage,
        norm_bars=_norm_bars(trace),
        test_sentence=TEST_SENTENCE,
        null_histogram=_null_histogram(trace.significance) if trace.significance else None,
        control=trace.control_significance,
        steering_rows=list(zip(trace.steering.unsteered.generations, trace.steering.steered, strict=False)),
        config=json.dumps(
            {"run": asdict(trace.run), "diff": asdict(trace.config), "forget": asdict(result.damage.config)}, indent=1
        ),
        environment=trace.environment,
        seconds={"trace": trace.seconds, "damage": result.damage.seconds},
    )


def _shade(enrichment: float | None) -> str:
    """Background colour of a token chip: greener the more the token is enriched in the data."""
    if enrichment is None or enrichment <= 0:
        return "#eef0f3"
    strength = min(enrichment / 6, 1.0)
    return f"rgba(22, 163, 74, {0.12 + 0.6 * strength:.2f})"


def _norm_bars(trace) -> dict:
    """Bars of the mean difference's norm per position, one colour per layer."""
    layers = sorted({t.layer for t in trace.traces})
    positions = list(dict.fromkeys(t.position for t in trace.traces))
    top = max(t.norm + t.norm_stderr for t in trace.traces) or 1.0
    slot = (PLOT_WIDTH - 2 * MARGIN) / len(positions)
    width = slot * 0.8 / len(layers)
    bars = []
    for t in trace.traces:
        x = MARGIN + positions.index(t.position) * slot + layers.index(t.layer) * width + slot * 0.1
        height = (PLOT_HEIGHT - 2 * MARGIN) * t.norm / top
        bars.append(
            {
                "x": x,
                "y": PLOT_HEIGHT - MARGIN - height,
                "width": width,
                "height": height,
                "layer": layers.index(t.layer),
                "title": f"layer {t.layer}, position {t.position}: {t.norm:.3g} ± {t.norm_stderr:.2g}",
            }
        )
    labels = [{"x": MARGIN + (i + 0.5) * slot, "text": p} for i, p in enumerate(positions)]
    return {
        "bars": bars,
        "labels": labels,
        "layers": layers,
        "top": top,
        "width": PLOT_WIDTH,
        "height": PLOT_HEIGHT,
        "margin": MARGIN,
    }


def _null_histogram(significance) -> dict:
    """The null's relevant-token counts as a histogram, and where the observed count falls."""
    values = significance.null_values
    low, high = min(values + [significance.relevant]), max(values + [significance.relevant])
    counts = [values.count(v) for v in range(low, high + 1)]
    slot = (PLOT_WIDTH - 2 * MARGIN) / len(counts)
    tallest = max(counts) or 1
    bars = [
        {
            "x": MARGIN + i * slot,
            "width": max(slot - 1, 1),
            "height": (PLOT_HEIGHT - 2 * MARGIN) * c / tallest,
            "title": f"{low + i}: {c} null draws",
        }
        for i, c in enumerate(counts)
    ]
    for bar in bars:
        bar["y"] = PLOT_HEIGHT - MARGIN - bar["height"]
    observed_x = MARGIN + (significance.relevant - low + 0.5) * slot
    return {
        "bars": bars,
        "observed_x": observed_x,
        "observed": significance.relevant,
        "low": low,
        "draws": len(values),
        "high": high,
        "width": PLOT_WIDTH,
        "height": PLOT_HEIGHT,
        "margin": MARGIN,
    }
