"""The `finetrace` command: parse, call the public API, print."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from finetrace.adl.collect import CollectConfig
from finetrace.adl.diff import RESULT_NAME, DiffConfig, diff
from finetrace.adl.score import ScoreConfig
from finetrace.adl.steer import SteerConfig
from finetrace.errors import FinetraceError
from finetrace.evals.drift import DriftConfig
from finetrace.forget import RESULT_NAME as FORGET_RESULT, ForgetConfig, forget
from finetrace.audit import REPORT_NAME, AuditConfig, AuditResult, GateOutcome, audit
from finetrace.gates import METRICS, parse_gate
from finetrace.evals.facts import COMMON_FACTS
from finetrace.provenance import provenance
from finetrace.provenance.contamination import evaluation_sets
from finetrace.provenance.scan import provenance_metrics
from finetrace.summary import print_audit, print_diff, print_forget, print_provenance
from finetrace.finetune import MANIFEST_NAME, FinetuneConfig, LoraSettings, finetune
from finetrace.training import TrainConfig
from finetrace.zoo import ORGANISMS, Zoo, build_zoo, open_zoo
from finetrace.zoo.build import default_facts, zoo_corpus

app = typer.Typer(help="What did your fine-tune do to the model?", no_args_is_help=True)
zoo_app = typer.Typer(help="Tiny model organisms with known ground truth.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
console = Console()

Preset = Annotated[str, typer.Option(help="Zoo preset: tiny (tests) or small (demo, benchmarks).")]


@app.command("finetune")
def finetune_command(
    base: Annotated[str, typer.Argument(help="Base model: a directory or a hub id.")],
    data: Annotated[Path, typer.Argument(help=".jsonl (text or chat messages) or .txt (a document per line).")],
    out: Annotated[Path, typer.Option(help="Output directory for the model or adapter.")],
    lora: Annotated[bool, typer.Option(help="Train a LoRA adapter instead of all weights.")] = False,
    lora_rank: int = 16,
    lora_alpha: int = 32,
    lora_targets: Annotated[str, typer.Option(help="Comma-separated module names, or all-linear; add lm_head for the output head.")] = "all-linear",
    epochs: float = 3.0,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps; overrides --epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default 2e-5 full, 2e-4 LoRA).")] = None,
    batch_size: int = 8,
    context_length: int = 512,
    pack: Annotated[bool, typer.Option(help="Pack documents into full blocks (pretraining style).")] = False,
    mix_general: Annotated[Path | None, typer.Option(help="General text corpus to mix into the data.")] = None,
    mix_ratio: Annotated[float, typer.Option(help="General documents per fine-tuning document.")] = 1.0,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    licence: Annotated[str | None, typer.Option(help="The data's SPDX licence expression, e.g. CC-BY-4.0.")] = None,
    source: Annotated[str | None, typer.Option(help="Where the data came from (a URL, a description).")] = None,
) -> None:
    """Fine-tune a causal LM on DATA and write the model plus a provenance manifest."""
    training = TrainConfig(epochs=epochs, steps=steps, learning_rate=lr, batch_size=batch_size,
                           context_length=context_length, pack=pack, seed=seed)
    adapter = LoraSettings(lora_rank, lora_alpha, tuple(lora_targets.split(","))) if lora else None
    config = FinetuneConfig(training=training, lora=adapter, mix_ratio=mix_ratio, device=device, dtype=dtype)
    result = finetune(base, data, out, config, mix_general=mix_general, overwrite=overwrite,
                      licence=licence, source=source)
    print_provenance(console, result.provenance)
    console.print(f"[green]saved[/] {'adapter' if result.adapter else 'model'} to {out}: loss on the "
                  f"data {result.loss_before:.3f} -> {result.loss_after:.3f} in {result.training.steps} "
                  f"steps ({result.training.seconds:.0f} s); manifest: {out / MANIFEST_NAME}")


@app.command("diff")
def diff_command(
    base: Annotated[str, typer.Argument(help="Base model: a directory or a hub id.")],
    finetuned: Annotated[str, typer.Argument(help="Fine-tuned model, or a PEFT adapter directory for BASE.")],
    corpus: Annotated[str | None, typer.Option(help=".txt, .jsonl, .parquet or a dataset id (default for zoo organisms: the zoo's held-out text).")] = None,
    data: Annotated[Path | None, typer.Option(help="The fine-tuning data, if known: relevance from it, and similarity.")] = None,
    control: Annotated[str | None, typer.Option(help="A control fine-tune of BASE on unrelated data, scored the same way.")] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("finetrace-diff"),
    samples: Annotated[int, typer.Option(help="Texts read from the corpus (all if fewer).")] = 10_000,
    positions: Annotated[int, typer.Option(help="Tokens per text that go through the models (k).")] = 8,
    report: Annotated[int, typer.Option(help="Text positions decoded and scored (0..n-1).")] = 5,
    layers: Annotated[str, typer.Option(help="Comma-separated fractions of depth (0.5) or layer indices (3).")] = "0.5",
    batch_size: int = 32,
    text_field: str = "text",
    device: str = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    seed: int = 0,
) -> None:
    """Read what a fine-tune was about from activation differences on unrelated text."""
    config = DiffConfig(
        collect=CollectConfig(layers=_layer_spec(layers), positions=positions, samples=samples, batch_size=batch_size),
        score=ScoreConfig(seed=seed), steer=SteerConfig(seed=seed), reported_positions=report,
        device=device, dtype=dtype, text_field=text_field,
    )
    result = diff(base, finetuned, corpus or _zoo_corpus_or_error(finetuned), out, config, data=data, control=control)
    print_diff(console, result)
    console.print(f"results: {out / RESULT_NAME}")


@app.command("forget")
def forget_command(
    base: Annotated[str, typer.Argument(help="Base model: a directory or a hub id.")],
    finetuned: Annotated[str, typer.Argument(help="Fine-tuned model, or a PEFT adapter directory for BASE.")],
    facts: Annotated[Path | None, typer.Option(help="JSONL of cloze facts (default: the zoo's planted facts for zoo organisms, else finetrace's built-in common-knowledge facts).")] = None,
    corpus: Annotated[str | None, typer.Option(help="Held-out general text for drift: .txt, .jsonl, .parquet or a dataset id (default for zoo organisms: the zoo's held-out text; otherwise drift is skipped).")] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("finetrace-forget"),
    samples: Annotated[int, typer.Option(help="Texts read from the corpus (all if fewer).")] = 1000,
    max_tokens: Annotated[int, typer.Option(help="Tokens per text.")] = 128,
    batch_size: int = 8,
    text_field: str = "text",
    device: str = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Which facts the fine-tune lost, and how far it drifted on general text."""
    drift = DriftConfig(samples=samples, max_tokens=max_tokens, batch_size=batch_size, seed=seed)
    config = ForgetConfig(drift=drift, text_field=text_field, device=device, dtype=dtype)
    result = forget(base, finetuned, facts or default_facts(finetuned), corpus or zoo_corpus(finetuned), out, config)
    print_forget(console, result)
    console.print(f"results: {out / FORGET_RESULT}")


@app.command("provenance")
def provenance_command(
    data: Annotated[Path, typer.Argument(help="A .jsonl or .txt file, or a directory of them.")],
    licence: Annotated[str | None, typer.Option(help="The data's SPDX licence expression, e.g. CC-BY-4.0.")] = None,
    source: Annotated[str | None, typer.Option(help="Where the data came from (a URL, a description).")] = None,
    base: Annotated[str | None, typer.Option(help="The base model to fine-tune: its model card's licence is checked against the data's.")] = None,
    facts: Annotated[Path | None, typer.Option(help="Cloze facts to look for in the data (default: finetrace's built-in facts).")] = None,
    corpus: Annotated[str | None, typer.Option(help="The corpus a diff or drift measure will read, to look for in the data.")] = None,
    corpus_items: Annotated[int, typer.Option(help="Texts of --corpus compared.")] = 1000,
    redact: Annotated[Path | None, typer.Option(help="Write a copy with personal data replaced by its kind.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path("provenance.json"),
    fail_on: Annotated[list[str] | None, typer.Option(help="Exit with code 1 when a condition holds, e.g. 'pii_found>0' or 'contaminated>0'. Repeatable.")] = None,
) -> None:
    """Fingerprint a dataset and scan it for duplicates, personal data, licence problems and evaluation overlap."""
    gates = tuple(parse_gate(condition) for condition in fail_on or ())
    evaluations = evaluation_sets(facts or COMMON_FACTS, corpus, corpus_items)
    report = provenance(data, licence, source, base, evaluations, redact).to_dict()
    out.write_text(json.dumps(report, indent=1))
    print_provenance(console, report)
    console.print(f"report: {out}")
    _finish_gates([GateOutcome(str(gate), gate.holds(provenance_metrics(report))) for gate in gates])


@zoo_app.command("build")
def zoo_build(preset: Preset = "tiny") -> None:
    """Build the zoo (or reuse the cached one) and list its organisms."""
    _print_zoo(build_zoo(preset))


@zoo_app.command("list")
def zoo_list(preset: Preset = "tiny") -> None:
    """List the organisms of a built zoo."""
    _print_zoo(open_zoo(preset))


@zoo_app.command("path")
def zoo_path(
    name: Annotated[str, typer.Argument(help=f"base, facts, heldout, general or an organism: {', '.join(ORGANISMS)}.")],
    preset: Preset = "tiny",
    documents: Annotated[bool, typer.Option(help="The organism's training documents instead.")] = False,
) -> None:
    """Print the path of a zoo item, for use in other commands."""
    zoo = open_zoo(preset)
    print(zoo.organism(name)["documents"] if documents else zoo.path(name))


@app.command("audit")
def audit_command(
    base: Annotated[str, typer.Argument(help="Base model: a directory or a hub id.")],
    finetuned: Annotated[str, typer.Argument(help="Fine-tuned model, or a PEFT adapter directory for BASE.")],
    corpus: Annotated[str | None, typer.Option(help="Unrelated general text: .txt, .jsonl, .parquet or a dataset id (default for zoo organisms: the zoo's held-out text).")] = None,
    data: Annotated[Path | None, typer.Option(help="The fine-tuning data, if known.")] = None,
    facts: Annotated[Path | None, typer.Option(help="JSONL of cloze facts (default: the zoo's planted facts for zoo organisms, else finetrace's built-in facts).")] = None,
    control: Annotated[str | None, typer.Option(help="A control fine-tune of BASE on unrelated data, shown for contrast.")] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("finetrace-audit"),
    samples: Annotated[int, typer.Option(help="Texts read from the corpus for the trace (all if fewer).")] = 10_000,
    drift_samples: Annotated[int, typer.Option(help="Texts read from the corpus for the drift measures.")] = 1000,
    fail_on: Annotated[list[str] | None, typer.Option(help=f"Exit with code 1 when a condition holds, e.g. 'lost_fraction>0.05', 'trace_p<0.01' or 'pii_found>0'; metrics: {', '.join(METRICS)}. Repeatable.")] = None,
    licence: Annotated[str | None, typer.Option(help="The data's SPDX licence expression (default: the one its finetrace manifest records).")] = None,
    device: str = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    seed: int = 0,
) -> None:
    """Audit a fine-tune: its trace, the facts it lost, its drift; a report, a summary and a model card."""
    gates = tuple(parse_gate(condition) for condition in fail_on or ())
    corpus = corpus or _zoo_corpus_or_error(finetuned)
    config = _audit_config(samples, drift_samples, device, dtype, seed)
    result = audit(base, finetuned, corpus, out, data=data, facts=facts or default_facts(finetuned),
                   control=control, config=config, fail_on=gates, licence=licence)
    _finish_audit(result, out)


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Output directory.")] = Path("finetrace-demo")) -> None:
    """Build or reuse the small zoo, audit its cake organism with the control for contrast, write the report."""
    zoo = build_zoo("small")
    _print_zoo(zoo)
    config = _audit_config(samples=10_000, drift_samples=500, device="auto", dtype="auto", seed=0)
    result = audit(zoo.path("base"), zoo.path("cake"), zoo.path("heldout"), out,
                   data=zoo.organism("cake")["documents"], facts=zoo.path("facts"), control=zoo.path("control"),
                   config=config)
    _finish_audit(result, out)


def _audit_config(samples: int, drift_samples: int, device: str, dtype: str, seed: int) -> AuditConfig:
    diff_config = DiffConfig(collect=CollectConfig(samples=samples), score=ScoreConfig(seed=seed),
                             steer=SteerConfig(seed=seed), device=device, dtype=dtype)
    forget_config = ForgetConfig(drift=DriftConfig(samples=drift_samples, seed=seed), device=device, dtype=dtype)
    return AuditConfig(diff=diff_config, forget=forget_config)


def _finish_audit(result: AuditResult, out: Path) -> None:
    print_audit(console, result)
    console.print(f"report: {(out / REPORT_NAME).resolve()}")
    _finish_gates(result.gates)


def _finish_gates(outcomes: list[GateOutcome]) -> None:
    """Exit with code 1 when a `--fail-on` condition holds."""
    if any(outcome.holds for outcome in outcomes):
        raise SystemExit(1)


def _print_zoo(zoo: Zoo) -> None:
    summary = zoo.summary()
    table = Table(title=f"finetrace zoo '{zoo.preset.name}' at {zoo.root}")
    for column in ("organism", "kind", "weights", "loss on its data: base -> fine-tuned"):
        table.add_column(column)
    for name in ORGANISMS:
        info = zoo.organism(name)
        table.add_row(name, info["kind"], "LoRA adapter" if info["adapter"] else "full",
                      f"{info['base_loss']:.2f} -> {info['finetuned_loss']:.2f}")
    console.print(table)
    console.print(f"The base knows {summary['base_facts_known']:.0%} of {summary['facts']} planted facts. "
                  f"General text: {summary['general_source']}.")
    for name in ORGANISMS:
        console.print(f"[bold]{name}[/]: {escape(zoo.organism(name)['description'])}")


def _zoo_corpus_or_error(finetuned: str) -> Path:
    corpus = zoo_corpus(finetuned)
    if corpus is None:
        raise FinetraceError(f"{finetuned} is not a zoo organism: give the unrelated text with --corpus")
    return corpus


def _layer_spec(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) if "." in item else int(item) for item in text.split(","))
    except ValueError:
        raise FinetraceError(f"--layers takes fractions or indices separated by commas, got {text!r}") from None


def main() -> None:
    """Entry point: a user error is one line on stderr and exit code 2, never a traceback."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        app()
    except FinetraceError as error:
        message = f"[red]error:[/] {escape(str(error))}"
        Console(stderr=True).print(message, soft_wrap=True, highlight=False)
        raise SystemExit(2) from None
