"""The `finetrace` command: parse, call the public API, print.

Every value is checked where it enters (the option callbacks below, or the configs'
own checks), every output is checked writable before a model loads, and every error
ends as one `error:` line with exit code 2 (1 is a failed `--fail-on` gate); the
traceback is shown only with `finetrace --debug` or `FINETRACE_DEBUG=1`.
"""

import contextlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import jinja2
import torch
import typer
from rich.console import Console
from rich.table import Table

from finetrace._util.outputs import check_output_dir, check_output_file, refuse_overlap, write_json
from finetrace._util.terminal import escape
from finetrace.adl.collect import CollectConfig
from finetrace.adl.diff import RESULT_NAME, DiffConfig, diff
from finetrace.audit import AuditConfig, audit
from finetrace.errors import FinetraceError
from finetrace.evals.behaviour import BehaviourConfig
from finetrace.evals.drift import DriftConfig
from finetrace.evals.facts import COMMON_FACTS
from finetrace.evals.forget import RESULT_NAME as FORGET_RESULT
from finetrace.evals.forget import ForgetConfig, forget
from finetrace.gates import METRICS, Gate, GateOutcome, parse_gate
from finetrace.provenance import provenance
from finetrace.provenance.contamination import evaluation_sets
from finetrace.provenance.scan import PROVENANCE_METRICS, provenance_metrics
from finetrace.report import write_reports
from finetrace.report.terminal import print_audit, print_diff, print_forget, print_provenance, print_watch
from finetrace.results import REPORT_NAME, AuditResult
from finetrace.run import DTYPE_CHOICES, RunConfig
from finetrace.train.finetune import MANIFEST_NAME, FinetuneConfig, LoraSettings, finetune
from finetrace.train.loop import TrainConfig
from finetrace.watch.cheap import CHEAP_DRIFT, CHEAP_TRACE, WATCH_METRICS, WatchConfig
from finetrace.watch.live import LiveWatch
from finetrace.watch.series import PAGE_NAME as WATCH_PAGE
from finetrace.watch.series import WATCH_NAME, WatchSeries
from finetrace.watch.watch import watch
from finetrace.zoo import ORGANISMS, Zoo, build_zoo, open_zoo
from finetrace.zoo.build import SPECIAL_PATHS, default_behaviour, default_facts, parent_of, zoo_corpus

console = Console()
DEBUG_HELP = "Show the full traceback of an error, for a bug report (also FINETRACE_DEBUG=1)."
# Accelerators a --device may name, and how to tell whether this machine has one.
DEVICES: dict[str, Callable[[], bool]] = {
    "cpu": lambda: True,
    "cuda": torch.cuda.is_available,
    "mps": torch.backends.mps.is_available,
}
# Faults that are not finetrace's own errors but have a known cause in the input or the
# machine: (exception type, pattern in its message, the line shown instead of a traceback).
FAULTS: list[tuple[type[BaseException], str, str]] = [
    (torch.OutOfMemoryError, "", "out of accelerator memory: lower --batch-size, or use --dtype bfloat16"),
    (MemoryError, "", "out of memory: lower --batch-size or --samples, or use a machine with more memory"),
    (
        RuntimeError,
        r"probability tensor contains|\bnan\b|\binf\b",
        "the model produced non-finite numbers ({message}): its weights or activations hold NaN or inf; "
        "check the model, or run with --dtype float32",
    ),
    (
        jinja2.TemplateError,
        "",
        "the model's chat template fails on a chat ({message}): fix it in the model's chat_template.jinja "
        "or tokenizer_config.json",
    ),
    (OSError, "", "{message}: check the path, its permissions and the free space"),
]


class OneLineErrors(typer.core.TyperGroup):
    """Ends every error of every subcommand as one `error:` line and exit code 2."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:
            if ctx.params.get("debug"):
                raise
            message = _usage_message(error) if isinstance(error, typer.TyperException) else _fault_message(error)
            Console(stderr=True).print(
                f"[red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True, highlight=False
            )
            raise typer.Exit(2) from None


def _usage_message(error: typer.TyperException) -> str:
    """A command-line mistake (a missing argument, a value of the wrong type), with where to look."""
    context = getattr(error, "ctx", None)  # set on usage errors, which know their command
    return f"{error.format_message()} (see: {context.command_path if context else 'finetrace'} --help)"


def _fault_message(error: Exception) -> str:
    if isinstance(error, FinetraceError):
        return str(error)
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for kind, pattern, line in FAULTS:
        if isinstance(error, kind) and re.search(pattern, text):
            return line.format(message=text)
    return (
        f"unexpected {type(error).__name__}: {text}; this is a finetrace bug: rerun with "
        f"finetrace --debug and report the traceback"
    )


app = typer.Typer(help="What did your fine-tune do to the model?", no_args_is_help=True, cls=OneLineErrors)
zoo_app = typer.Typer(help="Tiny model organisms with known ground truth.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", envvar="FINETRACE_DEBUG", help=DEBUG_HELP)] = False):
    """What did your fine-tune do to the model?"""
    from transformers.utils import logging

    logging.set_verbosity_error()  # finetrace reports what matters, with its own progress bars
    logging.disable_progress_bar()


# Option checks: each raises a FinetraceError naming the flag, the value and what it takes.


def _flag(param: typer.CallbackParam) -> str:
    return param.opts[0] if param.opts else param.human_readable_name


def _at_least(minimum: int) -> Callable:
    def check(param: typer.CallbackParam, value: int | None) -> int | None:
        if value is not None and value < minimum:
            raise FinetraceError(f"{_flag(param)} {value}: expected a whole number of at least {minimum}")
        return value

    return check


def _positive(param: typer.CallbackParam, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise FinetraceError(f"{_flag(param)} {value}: expected a positive number")
    return value


def _one_of(choices: tuple[str, ...]) -> Callable:
    def check(param: typer.CallbackParam, value: str) -> str:
        if value not in choices:
            raise FinetraceError(f"{_flag(param)} {value!r}: expected one of {', '.join(choices)}")
        return value

    return check


def _device(value: str) -> str:
    if value == "auto":
        return value
    kind, _, index = value.partition(":")
    if kind not in DEVICES or (index and not index.isdigit()) or value.endswith(":"):
        raise FinetraceError(f"--device {value!r}: expected auto, {', '.join(DEVICES)} or cuda:N")
    if not DEVICES[kind]():
        raise FinetraceError(
            f"--device {value}: this machine has no {kind} device (or torch was built "
            f"without it); use --device cpu, or auto to pick what is there"
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise FinetraceError(f"--device {value}: this machine has {torch.cuda.device_count()} CUDA devices")
    return value


def _out_dir(param: typer.CallbackParam, value: Path | None) -> Path | None:
    return None if value is None else check_output_dir(value, _flag(param))


def _out_file(param: typer.CallbackParam, value: Path | None) -> Path | None:
    return None if value is None else check_output_file(value, _flag(param))


def _count(text: str) -> typer.models.OptionInfo:
    return typer.Option(help=text, callback=_at_least(1))


# Options shared by several commands, declared once.
Preset = Annotated[
    str,
    typer.Option(
        help="Zoo preset: tiny (tests), small (demo), english or medium (broad English, benchmarks), smollm2 or gemma3 (a real pretrained base)."
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", callback=_device)]
Dtype = Annotated[
    str,
    typer.Option(
        help=f"{', '.join(DTYPE_CHOICES)} (auto: bfloat16 on a CUDA GPU that has it, else float32; float32 for training).",
        callback=_one_of(DTYPE_CHOICES),
    ),
]
Seed = Annotated[int, typer.Option(help="Seed of every random choice.")]
Strict = Annotated[bool, typer.Option(help="Refuse an adapter finetrace trained on another base (default: a warning).")]
BatchSize = Annotated[int, _count("Texts per forward pass.")]
TextField = Annotated[str, typer.Option(help="The field of a JSONL record that holds its text.")]
Base = Annotated[str, typer.Argument(help="Base model: a directory or a hub id.")]
Finetuned = Annotated[str, typer.Argument(help="Fine-tuned model, or a PEFT adapter directory for BASE.")]
Licence = Annotated[str | None, typer.Option(help="The data's SPDX licence expression, e.g. CC-BY-4.0.")]
Source = Annotated[str | None, typer.Option(help="Where the data came from (a URL, a description).")]
BehaviourFile = Annotated[
    Path | None,
    typer.Option(
        "--behaviour",
        help='JSONL of chat prompts, {"prompt", "expect": "refuse"|"answer", "category"}, for the refusal and over-refusal rates (default: a zoo organism\'s own, else finetrace\'s built-in set).',
    ),
]
NoBehaviour = Annotated[bool, typer.Option("--no-behaviour", help="Skip the refusal and over-refusal rates.")]
BehaviourSamples = Annotated[
    int,
    typer.Option(help="Sampled answers per behaviour prompt and model, beside the greedy one.", callback=_at_least(0)),
]
JudgeUrl = Annotated[
    str | None,
    typer.Option(
        help="An OpenAI-compatible endpoint (http://host:port/v1) that judges the greedy answers; off by default, and an answer it cannot judge is judged locally."
    ),
]
JudgeModel = Annotated[str, typer.Option(help="The model name sent to --judge-url.")]
FailOn = Annotated[
    list[str] | None,
    typer.Option(
        help=f"Exit with code 1 when a condition holds, e.g. 'lost_fraction>0.05'; metrics: {', '.join(METRICS)}. "
        f"Repeatable."
    ),
]


def _out(default: str) -> typer.models.OptionInfo:
    return typer.Option(help=f"Output directory (default {default}).", callback=_out_dir)


@app.command("finetune")
def finetune_command(
    base: Base,
    data: Annotated[Path, typer.Argument(help=".jsonl (text or chat messages) or .txt (a document per line).")],
    out: Annotated[Path, typer.Option(help="Output directory for the model or adapter.")],
    lora: Annotated[bool, typer.Option(help="Train a LoRA adapter instead of all weights.")] = False,
    lora_rank: Annotated[int, _count("LoRA rank.")] = 16,
    lora_alpha: Annotated[float, typer.Option(help="LoRA scale numerator.", callback=_positive)] = 32,
    lora_targets: Annotated[
        str, typer.Option(help="Comma-separated module names, or all-linear; add lm_head for the output head.")
    ] = "all-linear",
    epochs: Annotated[float, typer.Option(help="Passes over the data.", callback=_positive)] = 3.0,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps; overrides --epochs.", callback=_at_least(1))
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default 2e-5 full, 2e-4 LoRA).", callback=_positive)
    ] = None,
    batch_size: Annotated[int, _count("Examples per optimizer step.")] = 8,
    context_length: Annotated[int, typer.Option(help="Tokens per example.", callback=_at_least(2))] = 512,
    pack: Annotated[bool, typer.Option(help="Pack documents into full blocks (pretraining style).")] = False,
    mix_general: Annotated[Path | None, typer.Option(help="General text corpus to mix into the data.")] = None,
    mix_ratio: Annotated[
        float, typer.Option(help="General documents per fine-tuning document.", callback=_positive)
    ] = 1.0,
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Annotated[
        bool, typer.Option(help="Replace a non-empty output directory once the new one is complete.")
    ] = False,
    licence: Licence = None,
    source: Source = None,
    watch_every: Annotated[
        int | None,
        typer.Option(
            help="Audit the model every N steps as `finetrace watch` does (needs --watch-corpus).",
            callback=_at_least(1),
        ),
    ] = None,
    watch_corpus: Annotated[
        str | None, typer.Option(help="Unrelated general text for the watch's trace and drift.")
    ] = None,
    watch_facts: Annotated[
        Path,
        typer.Option(
            help="JSONL of cloze facts for the watch (default: finetrace's built-in facts).", show_default=False
        ),
    ] = COMMON_FACTS,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            help=f"With --watch-every: stop training, save the model and exit with code 1 at the first audit where a condition holds; metrics: {', '.join(WATCH_METRICS)}. Repeatable."
        ),
    ] = None,
) -> None:
    """Fine-tune a causal LM on DATA and write the model plus a provenance manifest."""
    training = TrainConfig(
        epochs=epochs, steps=steps, learning_rate=lr, batch_size=batch_size, context_length=context_length, pack=pack
    )
    adapter = LoraSettings(lora_rank, lora_alpha, tuple(lora_targets.split(","))) if lora else None
    config = FinetuneConfig(training=training, lora=adapter, mix_ratio=mix_ratio)
    monitor = _live_watch(watch_every, watch_corpus, watch_facts, data, _gates(fail_on, WATCH_METRICS))
    result = finetune(
        base,
        data,
        out,
        config,
        RunConfig(device, dtype, seed),
        mix_general=mix_general,
        overwrite=overwrite,
        licence=licence,
        source=source,
        monitor=monitor,
    )
    if result is None:  # another process of a launched run: the main process reports
        return
    print_provenance(console, result.provenance)
    console.print(
        f"[green]saved[/] {'adapter' if result.adapter else 'model'} to {escape(str(out))}: loss on "
        f"the data {result.loss_before:.3f} -> {result.loss_after:.3f} in {result.training.steps} "
        f"steps ({result.training.seconds:.0f} s); manifest: {escape(str(out / MANIFEST_NAME))}"
    )
    if monitor is not None:
        print_watch(console, WatchSeries.read(out / WATCH_NAME))
        console.print(f"watch report: {escape(str((out / WATCH_PAGE).resolve()))}")
        if monitor.stopped_at is not None:
            raise SystemExit(1)


def _live_watch(
    every: int | None, corpus: str | None, facts: Path, data: Path, gates: tuple[Gate, ...]
) -> LiveWatch | None:
    if every is None:
        if corpus is not None or gates:
            raise FinetraceError("--watch-corpus and --fail-on watch the training: give --watch-every as well")
        return None
    if corpus is None:
        raise FinetraceError("--watch-every audits the model on general text: give --watch-corpus as well")
    return LiveWatch(corpus, facts, data, every, fail_on=gates)


@app.command("diff")
def diff_command(
    base: Base,
    finetuned: Finetuned,
    corpus: Annotated[
        str | None,
        typer.Option(
            help=".txt, .jsonl, .parquet or a dataset id (default for zoo organisms: the zoo's held-out text)."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="The fine-tuning data, if known: relevance from it, and similarity.")
    ] = None,
    control: Annotated[
        str | None, typer.Option(help="A control fine-tune of BASE on unrelated data, scored the same way.")
    ] = None,
    out: Annotated[Path, _out("finetrace-diff")] = Path("finetrace-diff"),
    samples: Annotated[int, _count("Texts read from the corpus (all if fewer).")] = 10_000,
    positions: Annotated[int, _count("Tokens per text that go through the models (k).")] = 8,
    report: Annotated[int, _count("Text positions decoded and scored (0..n-1), at most --positions.")] = 5,
    layers: Annotated[str, typer.Option(help="Comma-separated fractions of depth (0.5) or layer indices (3).")] = "0.5",
    batch_size: BatchSize = 32,
    text_field: TextField = "text",
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    strict: Strict = False,
) -> None:
    """Read what a fine-tune was about from activation differences on unrelated text."""
    _check_report(report, positions)
    corpus = corpus or _zoo_corpus_or_error(finetuned)
    refuse_overlap(
        out, {"base model": base, "fine-tuned model": finetuned, "corpus": corpus, "data": data, "control": control}
    )
    config = DiffConfig(
        collect=CollectConfig(layers=_layer_spec(layers), positions=positions, samples=samples, batch_size=batch_size),
        reported_positions=report,
    )
    result = diff(
        base,
        finetuned,
        corpus,
        out,
        config,
        RunConfig(device, dtype, seed, strict, text_field),
        data=data,
        control=control,
    )
    if result is None:  # another process of a launched run: the main process reports
        return
    print_diff(console, result)
    console.print(f"results: {escape(str(out / RESULT_NAME))}")


@app.command("forget")
def forget_command(
    base: Base,
    finetuned: Finetuned,
    facts: Annotated[
        Path | None,
        typer.Option(
            help="JSONL of cloze facts (default: the zoo's planted facts for zoo organisms, else finetrace's built-in common-knowledge facts)."
        ),
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="Held-out general text for drift: .txt, .jsonl, .parquet or a dataset id (default for zoo organisms: the zoo's held-out text; otherwise drift is skipped)."
        ),
    ] = None,
    out: Annotated[Path, _out("finetrace-forget")] = Path("finetrace-forget"),
    samples: Annotated[int, _count("Texts read from the corpus (all if fewer).")] = 1000,
    max_tokens: Annotated[
        int, typer.Option(help="Tokens per text (at least 2: one predicts the next).", callback=_at_least(2))
    ] = 128,
    batch_size: BatchSize = 8,
    text_field: TextField = "text",
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    strict: Strict = False,
    behaviour: BehaviourFile = None,
    no_behaviour: NoBehaviour = False,
    behaviour_samples: BehaviourSamples = BehaviourConfig.samples,
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = BehaviourConfig.judge_model,
) -> None:
    """Which facts the fine-tune lost, how far it drifted on general text, and the refusals it lost or gained."""
    facts, corpus = facts or default_facts(finetuned), corpus or zoo_corpus(finetuned)
    prompts = _behaviour_prompts(behaviour, no_behaviour, finetuned)
    refuse_overlap(
        out, {"base model": base, "fine-tuned model": finetuned, "facts": facts, "corpus": corpus, "behaviour": prompts}
    )
    config = ForgetConfig(
        drift=DriftConfig(samples=samples, max_tokens=max_tokens, batch_size=batch_size),
        behaviour=BehaviourConfig(samples=behaviour_samples, judge_url=judge_url, judge_model=judge_model),
    )
    run = RunConfig(device, dtype, seed, strict, text_field)
    result = forget(base, finetuned, facts, corpus, out, config, run, behaviour=prompts)
    print_forget(console, result)
    console.print(f"results: {escape(str(out / FORGET_RESULT))}")


@app.command("provenance")
def provenance_command(
    data: Annotated[Path, typer.Argument(help="A .jsonl or .txt file, or a directory of them.")],
    licence: Licence = None,
    source: Source = None,
    base: Annotated[
        str | None,
        typer.Option(help="The base model to fine-tune: its model card's licence is checked against the data's."),
    ] = None,
    facts: Annotated[
        Path | None, typer.Option(help="Cloze facts to look for in the data (default: finetrace's built-in facts).")
    ] = None,
    corpus: Annotated[
        str | None, typer.Option(help="The corpus a diff or drift measure will read, to look for in the data.")
    ] = None,
    corpus_items: Annotated[int, _count("Texts of --corpus compared.")] = 1000,
    redact: Annotated[Path | None, typer.Option(help="Write a copy with personal data replaced by its kind.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.", callback=_out_file)] = Path(
        "provenance.json"
    ),
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Exit with code 1 when a condition holds, e.g. 'pii_found>0'; metrics: {', '.join(PROVENANCE_METRICS)}. Repeatable."
        ),
    ] = None,
) -> None:
    """Fingerprint a dataset and scan it for duplicates, personal data, licence problems and evaluation overlap."""
    gates = _gates(fail_on, PROVENANCE_METRICS)
    inputs = {"data": data, "corpus": corpus, "facts": facts}
    refuse_overlap(out, inputs | {"redacted copy": redact})
    if redact is not None:
        refuse_overlap(redact, inputs, "--redact", containing=True)
        (check_output_dir if data.is_dir() else check_output_file)(redact, "--redact")
    evaluations = evaluation_sets(facts or COMMON_FACTS, corpus, corpus_items)
    report = provenance(data, licence, source, base, evaluations, redact)
    write_json(out, report.to_dict())
    print_provenance(console, report)
    console.print(f"report: {escape(str(out))}")
    _finish_gates([gate.check(provenance_metrics(report)) for gate in gates])


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
    name: Annotated[str, typer.Argument(help=f"{', '.join(SPECIAL_PATHS)} or an organism: {', '.join(ORGANISMS)}.")],
    preset: Preset = "tiny",
    documents: Annotated[bool, typer.Option(help="The organism's training documents instead.")] = False,
) -> None:
    """Print the path of a zoo item, for use in other commands; the base, its facts and its text
    are built (or fetched, for a real model) when first asked for."""
    if documents and name in SPECIAL_PATHS:
        raise FinetraceError(
            f"--documents takes an organism ({', '.join(ORGANISMS)}); {name} has no "
            f"training documents: drop --documents to get its path"
        )
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the path alone, for $(finetrace zoo path ...)
        zoo = build_zoo(preset, []) if name in SPECIAL_PATHS else open_zoo(preset)
    print(zoo.organism(name).documents if documents else zoo.path(name))


@app.command("audit")
def audit_command(
    base: Base,
    finetuned: Finetuned,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="Unrelated general text: .txt, .jsonl, .parquet or a dataset id (default for zoo organisms: the zoo's held-out text)."
        ),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="The fine-tuning data, if known.")] = None,
    facts: Annotated[
        Path | None,
        typer.Option(
            help="JSONL of cloze facts (default: the zoo's planted facts for zoo organisms, else finetrace's built-in facts)."
        ),
    ] = None,
    control: Annotated[
        str | None, typer.Option(help="A control fine-tune of BASE on unrelated data, shown for contrast.")
    ] = None,
    out: Annotated[Path, _out("finetrace-audit")] = Path("finetrace-audit"),
    samples: Annotated[int, _count("Texts read from the corpus for the trace (all if fewer).")] = 10_000,
    drift_samples: Annotated[int, _count("Texts read from the corpus for the drift measures.")] = 1000,
    fail_on: FailOn = None,
    licence: Annotated[
        str | None,
        typer.Option(help="The data's SPDX licence expression (default: the one its finetrace manifest records)."),
    ] = None,
    text_field: TextField = "text",
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    strict: Strict = False,
    behaviour: BehaviourFile = None,
    no_behaviour: NoBehaviour = False,
    behaviour_samples: BehaviourSamples = BehaviourConfig.samples,
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = BehaviourConfig.judge_model,
) -> None:
    """Audit a fine-tune: its trace, the facts it lost, its drift, its refusals; a report, a summary and a model card."""
    gates = _gates(fail_on, METRICS)
    corpus = corpus or _zoo_corpus_or_error(finetuned)
    facts = facts or default_facts(finetuned)
    prompts = _behaviour_prompts(behaviour, no_behaviour, finetuned)
    refuse_overlap(
        out,
        {
            "base model": base,
            "fine-tuned model": finetuned,
            "corpus": corpus,
            "data": data,
            "facts": facts,
            "control": control,
            "behaviour": prompts,
        },
    )
    config = _audit_config(
        samples,
        drift_samples,
        RunConfig(device, dtype, seed, strict, text_field),
        BehaviourConfig(samples=behaviour_samples, judge_url=judge_url, judge_model=judge_model),
    )
    result = audit(
        base,
        finetuned,
        corpus,
        out,
        data=data,
        facts=facts,
        control=control,
        config=config,
        fail_on=gates,
        licence=licence,
        behaviour=prompts,
    )
    if result is not None:  # None: another process of a launched run; the main process reports
        _finish_audit(result, out)


@app.command("watch")
def watch_command(
    base: Base,
    checkpoints: Annotated[
        list[str],
        typer.Argument(
            help="Checkpoints of a fine-tune of BASE: model or adapter directories, globs, or a Trainer output directory (its checkpoint-<step>/)."
        ),
    ],
    corpus: Annotated[
        str,
        typer.Option(
            help="Unrelated general text for the trace and the drift: .txt, .jsonl, .parquet or a dataset id."
        ),
    ],
    facts: Annotated[
        Path,
        typer.Option(
            help="JSONL of cloze facts (default: finetrace's built-in common-knowledge facts).", show_default=False
        ),
    ] = COMMON_FACTS,
    data: Annotated[Path | None, typer.Option(help="The fine-tuning data; without it the trace is not tested.")] = None,
    out: Annotated[Path, _out("finetrace-watch")] = Path("finetrace-watch"),
    texts: Annotated[int, _count("Texts read for the trace.")] = CHEAP_TRACE.collect.samples,
    max_facts: Annotated[int, _count("Facts the base scores; checkpoints score those it knew.")] = WatchConfig.facts,
    drift_texts: Annotated[int, _count("Texts read for the drift.")] = CHEAP_DRIFT.samples,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Exit with code 1 when a condition holds at any checkpoint, e.g. 'lost_fraction>0.05'; metrics: {', '.join(WATCH_METRICS)}. Repeatable."
        ),
    ] = None,
    text_field: TextField = "text",
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
) -> None:
    """The cheap audit of every checkpoint of a fine-tune, by training step: watch.json and watch.html."""
    gates = _gates(fail_on, WATCH_METRICS)
    refuse_overlap(out, {"base model": base, "corpus": corpus, "facts": facts, "data": data})
    config = WatchConfig(
        trace=replace(CHEAP_TRACE, collect=replace(CHEAP_TRACE.collect, samples=texts)),
        drift=replace(CHEAP_DRIFT, samples=drift_texts),
        facts=max_facts,
    )
    run = RunConfig(device, dtype, seed, text_field=text_field)
    series = watch(base, checkpoints, corpus, out, facts, data, config, run, gates)
    print_watch(console, series)
    console.print(f"report: {escape(str((out / WATCH_PAGE).resolve()))}")
    if series.failed:
        raise SystemExit(1)


@app.command("report")
def report_command(
    summary: Annotated[Path, typer.Argument(help="The summary.json of an audit.")],
    out: Annotated[Path | None, _out("the summary's directory")] = None,
) -> None:
    """Rebuild an audit's report.html and MODEL_CARD.md from its summary.json, without the models."""
    result = AuditResult.read(summary)
    out = out or summary.parent
    write_reports(result, out)
    print_audit(console, result)
    console.print(f"report: {escape(str((out / REPORT_NAME).resolve()))}")


DEMO_ORGANISMS = ("cake", "control")  # the demo builds only what it audits


@app.command()
def demo(
    out: Annotated[Path, _out("finetrace-demo")] = Path("finetrace-demo"),
    preset: Annotated[
        str, typer.Option(help="The zoo: small (pretrained here, minutes), smollm2 or gemma3 (a real model, an hour).")
    ] = "small",
) -> None:
    """Build or reuse a zoo's base, cake and control, audit cake with the control for contrast,
    write the report."""
    zoo = build_zoo(preset, DEMO_ORGANISMS)
    _print_zoo(zoo)
    config = _audit_config(samples=10_000, drift_samples=500, run=RunConfig(), behaviour=BehaviourConfig())
    result = audit(
        zoo.path("base"),
        zoo.path("cake"),
        zoo.path("heldout"),
        out,
        data=zoo.organism("cake").documents,
        facts=zoo.path("facts"),
        control=zoo.path("control"),
        config=config,
        behaviour=zoo.path("behaviour"),
    )
    _finish_audit(result, out)


def _audit_config(samples: int, drift_samples: int, run: RunConfig, behaviour: BehaviourConfig) -> AuditConfig:
    return AuditConfig(
        diff=DiffConfig(collect=CollectConfig(samples=samples)),
        forget=ForgetConfig(drift=DriftConfig(samples=drift_samples), behaviour=behaviour),
        run=run,
    )


def _behaviour_prompts(prompts: Path | None, skip: bool, finetuned: str) -> Path | None:
    """The behaviour prompt set: the user's, else a zoo organism's own, else the built-in one;
    None with --no-behaviour."""
    if skip and prompts is not None:
        raise FinetraceError(f"--behaviour {prompts} and --no-behaviour contradict each other: give one")
    return None if skip else prompts or default_behaviour(finetuned)


def _finish_audit(result: AuditResult, out: Path) -> None:
    print_audit(console, result)
    console.print(f"report: {escape(str((out / REPORT_NAME).resolve()))}")
    _finish_gates(result.gates)


def _gates(conditions: list[str] | None, measured) -> tuple[Gate, ...]:
    return tuple(parse_gate(condition, measured) for condition in conditions or ())


def _finish_gates(outcomes: list[GateOutcome]) -> None:
    """Exit with code 1 when a `--fail-on` condition holds (or its metric is not a number)."""
    if any(outcome.holds for outcome in outcomes):
        raise SystemExit(1)


def _print_zoo(zoo: Zoo) -> None:
    summary = zoo.summary()
    table = Table(title=escape(f"finetrace zoo '{zoo.preset.name}' at {zoo.root}"))
    for column in ("organism", "kind", "weights", "fine-tuned from", "loss on its data: before -> after", "built in"):
        table.add_column(column)
    for name in zoo.organisms:
        organism = ORGANISMS[name]
        info = zoo.organism(name) if zoo.path(name).is_dir() else None
        losses = f"{info.base_loss:.2f} -> {info.finetuned_loss:.2f}" if info else "not built yet"
        built = f"{info.build_seconds / 60:.1f} min" if info else ""
        weights = "LoRA adapter" if organism.lora else "full"
        table.add_row(name, escape(organism.kind), weights, parent_of(zoo.preset, organism), losses, built)
    console.print(table)
    sources = ", ".join(f"{source.name} ({source.licence})" for source in summary.sources)
    model = summary.base_model
    base = f"{model.name}, licence {model.licence} ({model.terms})" if model else "pretrained by finetrace"
    facts = "real-world" if model else "planted"
    console.print(
        f"The base: {escape(base)}; perplexity {summary.heldout_perplexity:.1f} on held-out English, "
        f"{summary.base_facts_known:.0%} of {summary.facts} {facts} facts known. "
        f"Its English: {escape(sources)}."
    )
    for name in zoo.organisms:
        console.print(f"[bold]{name}[/]: {escape(ORGANISMS[name].description)}")


def _zoo_corpus_or_error(finetuned: str) -> Path:
    corpus = zoo_corpus(finetuned)
    if corpus is None:
        raise FinetraceError(f"{finetuned} is not a zoo organism: give the unrelated text with --corpus")
    return corpus


def _check_report(report: int, positions: int) -> None:
    if report > positions:
        raise FinetraceError(
            f"--report {report}: at most --positions ({positions}) text positions are "
            f"collected; lower --report or raise --positions"
        )


def _layer_spec(text: str) -> tuple[float, ...]:
    """Fractions of depth (0 <= f < 1, with a decimal point) or whole layer indices."""
    try:
        spec = tuple(float(item) if "." in item else int(item) for item in text.split(","))
    except ValueError:
        spec = ()
    if not spec or not all(0 <= item < 1 if isinstance(item, float) else item >= 0 for item in spec):
        raise FinetraceError(
            f"--layers {text!r}: expected fractions of depth below 1 (0.5) or whole layer "
            f"indices (3), separated by commas"
        )
    return spec


def main() -> None:
    """Entry point: the app, which turns every error into one line."""
    app()
