"""The `finetrace` command: parse, call the public API, print.

Every value is checked where it enters (the option callbacks below, or the configs'
own checks), every output is checked writable before a model loads, and every error
ends as one `error:` line with exit code 2 (1 is a failed `--fail-on` gate); the
traceback is shown only with `finetrace --debug` or `FINETRACE_DEBUG=1`.
"""

import contextlib
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from finetrace._util.outputs import check_output_dir
from finetrace._util.terminal import escape
from finetrace.errors import FinetraceError
from finetrace.gates import (
    AUDIT_METRICS,
    BENCHMARK_METRICS,
    PROVENANCE_METRICS,
    WATCH_METRICS,
    Gate,
    GateOutcome,
    parse_gate,
)
from finetrace.run import DTYPE_CHOICES, RunConfig

# Only what parsing needs is imported above: `finetrace --help`, a command's --help and a
# mistyped option load neither torch nor transformers. Each command imports its verb.
console = Console()
DEBUG_HELP = "Show the full traceback of an error, for a bug report (also FINETRACE_DEBUG=1)."


def _faults() -> list[tuple[type[BaseException], str, str]]:
    """Faults that are not finetrace's own errors but have a known cause in the input or the
    machine: (exception type, pattern in its message, the line shown instead of a traceback).
    Torch's and Jinja's are listed only once they are loaded: before that, none was raised."""
    faults = []
    if torch := sys.modules.get("torch"):
        faults.append(
            (torch.OutOfMemoryError, "", "out of accelerator memory: lower --batch-size, or use --dtype bfloat16")
        )
    faults += [
        (MemoryError, "", "out of memory: lower --batch-size or --samples, or use a machine with more memory"),
        (
            RuntimeError,
            r"probability tensor contains|\bnan\b|\binf\b",
            "the model produced non-finite numbers ({message}): its weights or activations hold NaN or inf; "
            "check the model, or run with --dtype float32",
        ),
    ]
    if jinja2 := sys.modules.get("jinja2"):
        faults.append(
            (
                jinja2.TemplateError,
                "",
                "the model's chat template fails on a chat ({message}): fix it in the model's "
                "chat_template.jinja or tokenizer_config.json",
            )
        )
    return [*faults, (OSError, "", "{message}: check the path, its permissions and the free space")]


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
    for kind, pattern, line in _faults():
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
    # finetrace reports what matters, with its own progress bars; transformers reads these when
    # it is first imported, and is told directly where it already is (a caller's process).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.set_verbosity_error()
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


def _out_dir(param: typer.CallbackParam, value: Path | None) -> Path | None:
    return None if value is None else check_output_dir(value, _flag(param))


def _count(text: str) -> typer.models.OptionInfo:
    return typer.Option(help=text, callback=_at_least(1))


# Options shared by several commands, declared once.
Preset = Annotated[
    str,
    typer.Option(
        help="Zoo preset: tiny (tests), small (demo), english or medium (broad English, benchmarks), smollm2 or gemma3 (a real pretrained base)."
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
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
        help=f"Exit with code 1 when a condition holds, e.g. 'lost_fraction>0.05'; metrics: {', '.join(AUDIT_METRICS)}. "
        f"Repeatable."
    ),
]


def _out(default: str, checked_by_verb: bool = True) -> typer.models.OptionInfo:
    """The output directory; a verb checks it itself (for Python callers too), in its own order."""
    return typer.Option(help=f"Output directory (default {default}).", callback=None if checked_by_verb else _out_dir)


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
    ] = None,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            help=f"With --watch-every: stop training, save the model and exit with code 1 at the first audit where a condition holds; metrics: {', '.join(WATCH_METRICS)}. Repeatable."
        ),
    ] = None,
) -> None:
    """Fine-tune a causal LM on DATA and write the model plus a provenance manifest."""
    from finetrace.monitor.series import PAGE_NAME, WATCH_NAME, WatchSeries
    from finetrace.report.terminal import print_provenance, print_watch
    from finetrace.train.config import FinetuneConfig, LoraSettings, TrainConfig
    from finetrace.train.finetune import MANIFEST_NAME, finetune

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
        console.print(f"watch report: {escape(str((out / PAGE_NAME).resolve()))}")
        if monitor.stopped_at is not None:
            raise SystemExit(1)


def _live_watch(every: int | None, corpus: str | None, facts: Path | None, data: Path, gates: tuple[Gate, ...]):
    if every is None:
        if corpus is not None or gates:
            raise FinetraceError("--watch-corpus and --fail-on watch the training: give --watch-every as well")
        return None
    if corpus is None:
        raise FinetraceError("--watch-every audits the model on general text: give --watch-corpus as well")
    from finetrace.verbs.live import LiveWatch

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
    report: Annotated[
        int,
        _count(
            "Text positions decoded and scored: the first n past the attention sink (0..n-1 after a BOS, 1..n without one), at most --positions."
        ),
    ] = 5,
    layers: Annotated[str, typer.Option(help="Comma-separated fractions of depth (0.5) or layer indices (3).")] = "0.5",
    batch_size: BatchSize = 32,
    text_field: TextField = "text",
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    strict: Strict = False,
) -> None:
    """Read what a fine-tune was about from activation differences on unrelated text."""
    from finetrace.adl.collect import CollectConfig
    from finetrace.adl.records import RESULT_NAME, DiffConfig
    from finetrace.report.terminal import print_diff
    from finetrace.verbs.diff import diff

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
    behaviour_samples: BehaviourSamples = 4,
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = "judge",
) -> None:
    """Which facts the fine-tune lost, how far it drifted on general text, and the refusals it lost or gained."""
    from finetrace.evals.behaviour import BehaviourConfig
    from finetrace.evals.drift import DriftConfig
    from finetrace.evals.records import RESULT_NAME, ForgetConfig
    from finetrace.report.terminal import print_forget
    from finetrace.verbs.forget import forget

    prompts = _behaviour(behaviour, no_behaviour)
    config = ForgetConfig(
        drift=DriftConfig(samples=samples, max_tokens=max_tokens, batch_size=batch_size),
        behaviour=BehaviourConfig(samples=behaviour_samples, judge_url=judge_url, judge_model=judge_model),
    )
    run = RunConfig(device, dtype, seed, strict, text_field)
    result = forget(base, finetuned, facts, corpus, out, config, run, behaviour=prompts)
    print_forget(console, result)
    console.print(f"results: {escape(str(out / RESULT_NAME))}")


class SeveralNumbers(typer.core.TyperCommand):
    """A command whose `--amplify` takes several numbers after one flag: click gives an option one
    value per flag, so `--amplify 0 1 2` is read as `--amplify 0 --amplify 1 --amplify 2`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _spread("--amplify", args))


def _spread(flag: str, args: list[str]) -> list[str]:
    """`args` with `flag` repeated before each number that follows its value."""
    spread, state = [], "out"  # out: elsewhere; value: the flag's own value is next; more: after it
    for arg in args:
        if state == "more" and _number(arg):
            spread += [flag, arg]
        else:
            spread.append(arg)
            state = "value" if arg == flag else "more" if state == "value" else "out"
    return spread


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@app.command("sample", cls=SeveralNumbers)
def sample_command(
    base: Base,
    finetuned: Finetuned,
    amplify: Annotated[
        list[float] | None,
        typer.Option(
            help="Strengths a of ft + a (ft - base), one or more: --amplify 0 1 2 4 (the default); 0 samples the fine-tune itself."
        ),
    ] = None,
    samples: Annotated[int, _count("Samples per prompt and strength.")] = 8,
    max_new_tokens: Annotated[int, _count("New tokens per sample at most (a row ends at EOS).")] = 32,
    temperature: Annotated[
        float, typer.Option(help="Of the amplified distribution (no top-k or top-p); 0: greedy.")
    ] = 1.0,
    data: Annotated[
        Path | None,
        typer.Option(
            help="The fine-tuning data: its domain's tokens make the domain rate (default for zoo organisms: its documents)."
        ),
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="General text the data's tokens are read against (default for zoo organisms: the zoo's held-out text)."
        ),
    ] = None,
    min_domain_tokens: Annotated[
        int, _count("Distinct domain tokens a sample must generate to count as the domain's.")
    ] = 1,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="A word or phrase of the behaviour to count (case-insensitive; a sample with any one counts). Repeatable."
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help='A .txt (a prompt a line) or .jsonl ({"prompt": ...}) of prompts (default: neutral ones).'),
    ] = None,
    chat_only: Annotated[
        bool, typer.Option(help="Ask the prompts only as user turns, not also as plain text (needs a chat template).")
    ] = False,
    out: Annotated[Path, _out("finetrace-sample")] = Path("finetrace-sample"),
    batch_size: Annotated[int, _count("Prompts sampled together, each with all its samples.")] = 16,
    text_field: TextField = "text",
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    strict: Strict = False,
) -> None:
    """Sample from the fine-tune's amplified difference with the base: how often each strength shows the domain or a target."""
    from finetrace.adl.amplify import RESULT_NAME, SampleConfig
    from finetrace.report.terminal import print_sample
    from finetrace.verbs.sample import sample

    config = SampleConfig(
        strengths=tuple(amplify or SampleConfig.strengths),
        samples_per_prompt=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        chat_only=chat_only,
        min_domain_tokens=min_domain_tokens,
    )
    run = RunConfig(device, dtype, seed, strict, text_field)
    result = sample(base, finetuned, out, config, run, data, corpus, prompts, tuple(target or ()))
    print_sample(console, result)
    console.print(f"results: {escape(str(out / RESULT_NAME))}")


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
    text_field: TextField = "text",
    redact: Annotated[Path | None, typer.Option(help="Write a copy with personal data replaced by its kind.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path("provenance.json"),
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Exit with code 1 when a condition holds, e.g. 'pii_found>0'; metrics: {', '.join(PROVENANCE_METRICS)}. Repeatable."
        ),
    ] = None,
) -> None:
    """Fingerprint a dataset and scan it for duplicates, personal data, licence problems and evaluation overlap."""
    from finetrace.papertrail.scan import ProvenanceConfig, provenance_metrics
    from finetrace.report.terminal import print_provenance
    from finetrace.verbs.provenance import provenance

    gates = _gates(fail_on, PROVENANCE_METRICS)
    config = ProvenanceConfig(text_field=text_field)
    report = provenance(data, licence, source, base, facts, corpus, out, redact, corpus_items, config)
    print_provenance(console, report)
    console.print(f"report: {escape(str(out))}")
    _finish_gates([gate.check(provenance_metrics(report)) for gate in gates])


@app.command("weights")
def weights_command(
    base: Base,
    finetuned: Finetuned,
    out: Annotated[Path, _out("finetrace-weights")] = Path("finetrace-weights"),
    top_k: Annotated[
        int, typer.Option(help="Leading singular vectors of each fine-tuned matrix examined.", callback=_at_least(1))
    ] = 10,
    threshold: Annotated[
        float,
        typer.Option(
            help="A singular vector is an intruder when its largest |cosine| with the base's is below this.",
            callback=_positive,
        ),
    ] = 0.5,
    strict: Strict = False,
) -> None:
    """What the fine-tune did to each weight matrix: its change, the change's rank and its intruder dimensions, from the weights alone."""
    from finetrace.report.terminal import print_weights
    from finetrace.spectra.intruders import SpectraConfig
    from finetrace.spectra.records import RESULT_NAME
    from finetrace.verbs.weights import weights

    result = weights(base, finetuned, out, SpectraConfig(top_k, threshold), RunConfig(strict=strict))
    print_weights(console, result)
    console.print(f"results: {escape(str(out / RESULT_NAME))}")


@app.command("compare-evals")
def compare_evals_command(
    base_run: Annotated[
        Path, typer.Argument(help="The base model's lm_eval --output_path, written with --log_samples.")
    ],
    finetuned_run: Annotated[Path, typer.Argument(help="The fine-tune's, on the same tasks and documents.")],
    metric: Annotated[
        str | None,
        typer.Option(
            help="The per-document 0/1 metric to compare, e.g. exact_match (default: acc where a task has it, else its first 0/1 metric)."
        ),
    ] = None,
    out: Annotated[Path, _out("finetrace-compare-evals")] = Path("finetrace-compare-evals"),
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Exit with code 1 when a condition holds, e.g. 'benchmark_drop>0.02'; metrics: {', '.join(BENCHMARK_METRICS)}. Repeatable."
        ),
    ] = None,
) -> None:
    """Compare two lm-evaluation-harness runs, base and fine-tune, document by document (exact McNemar tests)."""
    from finetrace.evals.benchmarks import RESULT_NAME, benchmark_metrics
    from finetrace.verbs.compare_evals import compare_evals

    gates = _gates(fail_on, BENCHMARK_METRICS)
    comparison = compare_evals(base_run, finetuned_run, out, metric)
    _print_benchmarks(comparison)
    console.print(f"results: {escape(str(out / RESULT_NAME))}")
    _finish_gates([gate.check(benchmark_metrics(comparison)) for gate in gates])


@zoo_app.command("build")
def zoo_build(preset: Preset = "tiny") -> None:
    """Build the zoo (or reuse the cached one) and list its organisms."""
    from finetrace.zoo.build import build_zoo

    _print_zoo(build_zoo(preset))


@zoo_app.command("list")
def zoo_list(preset: Preset = "tiny") -> None:
    """List the organisms of a built zoo."""
    from finetrace.zoo.build import open_zoo

    _print_zoo(open_zoo(preset))


@zoo_app.command("path")
def zoo_path(
    name: Annotated[
        str,
        typer.Argument(help="base, facts, behaviour, heldout, general, or an organism (`finetrace zoo list`)."),
    ],
    preset: Preset = "tiny",
    documents: Annotated[bool, typer.Option(help="The organism's training documents instead.")] = False,
) -> None:
    """Print the path of a zoo item, for use in other commands; the base, its facts and its text
    are built (or fetched, for a real model) when first asked for."""
    from finetrace.zoo.build import build_zoo, open_zoo
    from finetrace.zoo.organisms import ORGANISMS
    from finetrace.zoo.records import SPECIAL_PATHS

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
    behaviour_samples: BehaviourSamples = 4,
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = "judge",
    weights: Annotated[
        bool,
        typer.Option(
            "--weights",
            help="Also each weight matrix's change and intruder dimensions (finetrace weights; minutes on a large model).",
        ),
    ] = False,
) -> None:
    """Audit a fine-tune: its trace, the facts it lost, its drift, its refusals; a report, a summary and a model card."""
    from dataclasses import replace

    from finetrace.evals.behaviour import BehaviourConfig
    from finetrace.spectra.intruders import SpectraConfig
    from finetrace.verbs.audit import audit

    gates = _gates(fail_on, AUDIT_METRICS)
    config = _audit_config(
        samples,
        drift_samples,
        RunConfig(device, dtype, seed, strict, text_field),
        BehaviourConfig(samples=behaviour_samples, judge_url=judge_url, judge_model=judge_model),
    )
    config = replace(config, weights=SpectraConfig() if weights else None)
    prompts = _behaviour(behaviour, no_behaviour)
    result = audit(base, finetuned, corpus, out, data, facts, control, config, gates, licence, prompts)
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
        Path | None,
        typer.Option(help="JSONL of cloze facts (default: finetrace's built-in common-knowledge facts)."),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="The fine-tuning data; without it the trace is not tested.")] = None,
    out: Annotated[Path, _out("finetrace-watch")] = Path("finetrace-watch"),
    texts: Annotated[int, _count("Texts read for the trace.")] = 256,
    max_facts: Annotated[int, _count("Facts the base scores; checkpoints score those it knew.")] = 100,
    drift_texts: Annotated[int, _count("Texts read for the drift.")] = 64,
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
    from dataclasses import replace

    from finetrace.monitor.cheap import CHEAP_DRIFT, CHEAP_TRACE, WatchConfig
    from finetrace.monitor.series import PAGE_NAME
    from finetrace.report.terminal import print_watch
    from finetrace.verbs.watch import watch

    gates = _gates(fail_on, WATCH_METRICS)
    config = WatchConfig(
        trace=replace(CHEAP_TRACE, collect=replace(CHEAP_TRACE.collect, samples=texts)),
        drift=replace(CHEAP_DRIFT, samples=drift_texts),
        facts=max_facts,
    )
    run = RunConfig(device, dtype, seed, text_field=text_field)
    series = watch(base, checkpoints, corpus, out, facts, data, config, run, gates)
    print_watch(console, series)
    console.print(f"report: {escape(str((out / PAGE_NAME).resolve()))}")
    if series.failed:
        raise SystemExit(1)


@app.command("report")
def report_command(
    summary: Annotated[Path, typer.Argument(help="The summary.json of an audit.")],
    out: Annotated[Path | None, _out("the summary's directory", checked_by_verb=False)] = None,
) -> None:
    """Rebuild an audit's report.html and MODEL_CARD.md from its summary.json, without the models."""
    from finetrace.report import write_reports
    from finetrace.results import AuditResult

    result = AuditResult.read(summary)
    out = out or summary.parent
    write_reports(result, out)
    _finish_audit(result, out, gate=False)


DEMO_ORGANISMS = ("cake", "control")  # the demo builds only what it audits


@app.command()
def demo(
    out: Annotated[Path, _out("finetrace-demo", checked_by_verb=False)] = Path("finetrace-demo"),
    preset: Annotated[
        str,
        typer.Option(
            help="The zoo: small (pretrained here, minutes), smollm2 or gemma3 (a real model: about 30 min on 2 cores)."
        ),
    ] = "small",
) -> None:
    """Build or reuse a zoo's base, cake and control, audit cake with the control for contrast,
    write the report."""
    from finetrace.evals.behaviour import BehaviourConfig
    from finetrace.verbs.audit import audit
    from finetrace.zoo.build import build_zoo

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


def _audit_config(samples: int, drift_samples: int, run: RunConfig, behaviour):
    from finetrace.adl.collect import CollectConfig
    from finetrace.adl.records import DiffConfig
    from finetrace.evals.drift import DriftConfig
    from finetrace.evals.records import ForgetConfig
    from finetrace.verbs.audit import AuditConfig

    return AuditConfig(
        diff=DiffConfig(collect=CollectConfig(samples=samples)),
        forget=ForgetConfig(drift=DriftConfig(samples=drift_samples), behaviour=behaviour),
        run=run,
    )


def _behaviour(prompts: Path | None, skip: bool) -> Path | bool:
    """--behaviour and --no-behaviour as the API's `behaviour`: a path, True (the default set) or False."""
    if skip and prompts is not None:
        raise FinetraceError(f"--behaviour {prompts} and --no-behaviour contradict each other: give one")
    return False if skip else prompts or True


def _finish_audit(result, out: Path, gate: bool = True) -> None:
    from finetrace.report.terminal import print_audit
    from finetrace.results import REPORT_NAME

    print_audit(console, result)
    console.print(f"report: {escape(str((out / REPORT_NAME).resolve()))}")
    if gate:
        _finish_gates(result.gates)


def _gates(conditions: list[str] | None, measured) -> tuple[Gate, ...]:
    return tuple(parse_gate(condition, measured) for condition in conditions or ())


def _finish_gates(outcomes: list[GateOutcome]) -> None:
    """Exit with code 1 when a `--fail-on` condition holds (or its metric is not a number)."""
    if any(outcome.holds for outcome in outcomes):
        raise SystemExit(1)


def _print_benchmarks(comparison) -> None:
    """Per task: its documents, both accuracies, the change with its interval, the flips, McNemar's p."""
    models = comparison.models
    title = f"{models.get('finetuned', comparison.finetuned)} vs {models.get('base', comparison.base)}"
    table = Table(title=escape(title))
    confidence = comparison.tasks[0].accuracy.confidence
    for column in ("task", "metric", "n", "base", "fine-tuned", f"change [{confidence:.0%}]", "lost", "gained", "p"):
        table.add_column(column, overflow="fold")  # a narrow terminal wraps a task's name, never cuts it
    for task in comparison.tasks:
        rate = task.accuracy
        low, high = rate.change_interval
        name = task.task if task.filter == "none" else f"{task.task} ({task.filter})"
        table.add_row(
            escape(name),
            escape(task.metric),
            str(task.n),
            f"{rate.before:.1%}",
            f"{rate.after:.1%}",
            f"{_points(rate.change)} [{_points(low)}, {_points(high)}]",
            str(rate.flips.lost),
            str(rate.flips.gained),
            f"{rate.p_value:.3g}",
        )
    console.print(table)
    console.print(
        f"[dim]change in points [{confidence:.0%} interval, paired by document]; "
        f"p: exact McNemar test on the flipped documents[/]"
    )
    console.print(
        f"mean change over {len(comparison.tasks)} tasks: {_points(comparison.mean_change)} points; "
        f"benchmark_drop (the largest drop): {comparison.benchmark_drop:.3f}"
    )
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")


def _points(fraction: float) -> str:
    return f"{fraction * 100:+.1f}"


def _print_zoo(zoo) -> None:
    from finetrace.zoo.build import parent_of
    from finetrace.zoo.organisms import ORGANISMS

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
