"""`finetrace diff`: the whole Activation Difference Lens on one model pair.

collect the mean differences -> decode each reported position (logit lens
through both heads, Patchscope) -> score (with the fine-tuning data: relevant
lens tokens against the null of `adl.score`) -> steer with the difference.
"""

import json
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from finetrace._util.distributed import is_main
from finetrace._util.fingerprints import environment
from finetrace._util.outputs import write_json
from finetrace._util.records import Result
from finetrace._util.timing import Stopwatch
from finetrace.adl.collect import BASE_STORE, CollectConfig, Collected, collect
from finetrace.adl.decode import (
    DecodeConfig,
    Patchscope,
    TokenScore,
    lens_tokens,
    patchscope,
    undertrained_tokens,
    unreadable_tokens,
)
from finetrace.adl.moments import save_tensors
from finetrace.adl.score import (
    Relevance,
    ScoreConfig,
    Significance,
    embedding_similarities,
    relevance,
    token_counts,
    trace_significance,
)
from finetrace.adl.steer import SteerConfig, Steering, steer
from finetrace.corpus import Record, iter_texts, read_records, record_texts
from finetrace.errors import FinetraceError, require
from finetrace.models.gguf import GgufSource, gguf_sources
from finetrace.models.load import resolve_device
from finetrace.models.pair import ModelPair, load_pair
from finetrace.models.residual import Readout
from finetrace.run import RunConfig

SCHEMA_VERSION = 3
SIGNIFICANT = 0.01  # the level at which a trace is called clear
RESULT_NAME = "diff.json"
TENSORS_NAME = "differences.safetensors"


@dataclass(frozen=True)
class DiffConfig:
    """Every setting of a diff run; the defaults are the paper's where it has one."""

    collect: CollectConfig = CollectConfig()
    decode: DecodeConfig = DecodeConfig()
    score: ScoreConfig = ScoreConfig()
    steer: SteerConfig = SteerConfig()
    reported_positions: int = 5  # text positions 0..n-1 are decoded and scored (the paper: 0-4)
    steer_position: int = 0  # the position whose difference steers generation

    def __post_init__(self) -> None:
        if not 1 <= self.reported_positions <= self.collect.positions:
            raise FinetraceError(
                f"reported positions {self.reported_positions}: expected 1 to the "
                f"{self.collect.positions} positions collected"
            )
        if not 0 <= self.steer_position < self.collect.positions:
            raise FinetraceError(f"steering position {self.steer_position}: expected 0 to {self.collect.positions - 1}")


@dataclass(frozen=True)
class PositionTrace:
    """What the mean difference at one (layer, position) says."""

    layer: int
    position: str  # "BOS", "0", "1", ...
    sink: bool  # the attention sink: its norm is outsized, and it stays out of the typical norm
    norm: float  # L2 norm of the mean difference
    norm_stderr: float  # L2 norm of its per-dimension standard errors
    relative_norm: float  # norm / typical norm of the fine-tuned residual there
    lens_finetuned: list[TokenScore]  # logit lens through the fine-tuned model's head
    lens_base: list[TokenScore]  # ... and through the base model's head
    patchscope: Patchscope
    significance: Significance | None  # relevant lens tokens against the null; None untested
    relevant_fraction: float | None  # of lens_finetuned; None without the fine-tuning data


@dataclass(frozen=True)
class DiffResult(Result):
    """Everything a diff found; written as `diff.json`."""

    base: str
    finetuned: str
    adapter: bool
    corpus: str
    texts: int
    data: str | None  # the fine-tuning data relevance was read from; None: untested
    traces: list[PositionTrace]
    steering: Steering
    # Relevant lens tokens summed over the text positions of the first layer, against the null;
    # None without the data: relevance read from the fine-tune itself would make the test circular.
    significance: Significance | None
    relevant_unreadable: int  # relevant tokens left out of the lists as unreadable (special, fragment)
    config: DiffConfig
    run: RunConfig
    environment: dict[str, str]
    seconds: dict[str, float]
    similarity: dict[str, float] | None = None  # steered/unsteered vs data/general text
    control: str | None = None
    control_significance: Significance | None = None  # the control's trace, scored the same way
    warnings: list[str] = field(default_factory=list)  # doubts about the pair (see `ModelPair.warnings`)
    gguf: dict[str, GgufSource] = field(default_factory=dict)  # the inputs given as GGUF files, by role
    schema_version: int = SCHEMA_VERSION
    derived = ("trace_strength", "p_value", "clear", "control_passes")

    def __post_init__(self) -> None:  # a record read back is held to what a diff writes
        require(bool(self.traces), "traces", self.traces, "at least one position's trace")

    @property
    def trace_strength(self) -> float | None:
        """The share of the scored lens tokens that are domain tokens beyond the null's mean."""
        return self.significance.strength if self.significance else None

    @property
    def p_value(self) -> float | None:
        return self.significance.p_value if self.significance else None

    @property
    def control_passes(self) -> bool:
        """The control, which is not about the domain, passes the test too: the test cannot tell
        this fine-tune's trace from a generic fine-tuning shift on this base and data."""
        return self.control_significance is not None and self.control_significance.p_value < SIGNIFICANT

    @property
    def clear(self) -> bool:
        """The verdict: the test finds the data's domain in the trace, and the control does not."""
        return self.p_value is not None and self.p_value < SIGNIFICANT and not self.control_passes


def diff(
    base: str | Path,
    finetuned: str | Path,
    corpus: str | Path,
    out: str | Path,
    config: DiffConfig = DiffConfig(),
    run: RunConfig = RunConfig(),
    data: str | Path | None = None,
    control: str | Path | None = None,
    pair: ModelPair | None = None,
) -> DiffResult | None:
    """Read what the fine-tune was about from activation differences on `corpus`.

    Under `torchrun` or `accelerate launch`, every process collects its share of the corpus;
    the main process then decodes, scores, steers, writes and returns the result, and the
    others return None once the collection is done.

    Args:
        base: the base model (a directory or a hub id).
        finetuned: the fine-tuned model, or a PEFT adapter directory for `base`.
        corpus: unrelated text: `.txt`, `.jsonl`, `.parquet` or a dataset id (streamed).
        out: output directory (differences, `diff.json`, and a checkpoint to resume from).
        config: settings of every stage.
        run: the device, dtype, seed and text field the whole run shares.
        data: the fine-tuning data, when known: relevance from it, and similarity scores.
        control: a control fine-tune of `base` (same recipe, unrelated data), tested against the
            same data: where it passes too, the test cannot tell this trace from a generic shift.
        pair: `base` and `finetuned` already loaded (`load_pair`), to share one load between analyses.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if control is not None and data is None:
        raise FinetraceError("a control is scored against the fine-tuning data: give --data as well")
    clock = Stopwatch()
    pair = pair or load_pair(base, finetuned, run.device, run.dtype, run.strict)
    clock.lap("load")
    records = read_records(data) if data is not None else None
    general = None if data is None else list(islice(iter_texts(corpus, run.text_field), config.collect.samples))
    # What needs the base comes first: it is loaded, and then collection starts with it.
    domain = domain_tokens(pair, records, general, config) if records is not None else None
    allowed = domain.allowed if domain else allowed_tokens(pair, config, None)
    clock.lap("relevance")
    store = out / BASE_STORE
    collected = collect(pair, corpus, config.collect, out, run.text_field, store, keep_base=control is not None)
    clock.lap("collect")
    control_significance = None
    if control is not None:  # collected next, so that every process's part ends here
        pair.release()  # one model in memory at a time, even when the caller holds the pair
        control_pair = load_pair(base, control, run.device, run.dtype, run.strict)
        control_collected = collect(control_pair, corpus, config.collect, out / "control", run.text_field, store)
        if is_main():
            control_significance = domain_significance(control_pair, control_collected, domain, config, run.seed)
        control_pair.release()
        clock.lap("control")
    if not is_main():
        return None
    traces, total = _decode_and_score(pair, collected, config, domain, allowed, run.seed)
    clock.lap("decode")
    steering = _steered(pair, collected, config, run.seed)
    clock.lap("steer")
    similarity = _similarity(steering, records, general) if records is not None else None
    clock.lap("similarity")
    result = DiffResult(
        base=str(base),
        finetuned=str(finetuned),
        adapter=pair.adapter,
        corpus=str(corpus),
        texts=collected.texts,
        data=str(data) if data is not None else None,
        traces=traces,
        steering=steering,
        significance=total,
        relevant_unreadable=domain.unreadable if domain else 0,
        config=config,
        run=run,
        environment=environment(resolve_device(run.device)),
        seconds=clock.laps,
        similarity=similarity,
        control=str(control) if control else None,
        control_significance=control_significance,
        warnings=pair.warnings,
        gguf=pair.gguf | gguf_sources(control=control),
    )
    _write(out, result, collected)
    return result


@dataclass(frozen=True)
class DomainTokens:
    """The fine-tuning domain's tokens, and the tokens token lists may show."""

    relevance: Relevance
    allowed: torch.Tensor  # (vocab,) bool
    unreadable: int  # relevant tokens no list may show (special tokens, fragments)


def domain_tokens(pair: ModelPair, records: list[Record], general: list[str], config: DiffConfig) -> DomainTokens:
    """Relevance of the fine-tuning data against the general corpus (see `read_domain`)."""
    return read_domain(pair.tokenizer, _base_embedding(pair), records, general, config)


def read_domain(
    tokenizer: PreTrainedTokenizerBase,
    embedding: torch.Tensor,
    records: list[Record],
    general: list[str],
    config: DiffConfig,
) -> DomainTokens:
    """The domain's tokens from the base's input `embedding` (vocab, d), counted turn by turn: a
    chat answer starts a text, so its first word is tokenized as the model writes it."""
    data = token_counts(tokenizer, (text for record in records for text in record_texts(record)))
    domain = relevance(data, token_counts(tokenizer, general), embedding.shape[0], config.score)
    allowed = readable_tokens(tokenizer, embedding, config, domain.relevant)
    return DomainTokens(domain, allowed, int((domain.relevant & ~allowed).sum()))


def allowed_tokens(pair: ModelPair, config: DiffConfig, relevant: torch.Tensor | None) -> torch.Tensor:
    """`readable_tokens` of the pair's base."""
    return readable_tokens(pair.tokenizer, _base_embedding(pair), config, relevant)


def readable_tokens(
    tokenizer: PreTrainedTokenizerBase, embedding: torch.Tensor, config: DiffConfig, relevant: torch.Tensor | None
) -> torch.Tensor:
    """(vocab,) tokens that may appear in token lists: readable, and learned by the base, unless
    the fine-tuning data uses them often (`relevant`): a fine-tune may have taught exactly those."""
    undertrained = undertrained_tokens(embedding, config.decode.embedding_norm_quantile)
    if relevant is not None:
        undertrained &= ~relevant
    return ~(unreadable_tokens(tokenizer, embedding.shape[0]) | undertrained)


def _base_embedding(pair: ModelPair) -> torch.Tensor:
    with pair.use("base") as (model, _):
        return model.get_input_embeddings().weight.detach()


def domain_significance(
    pair: ModelPair, collected: Collected, domain: DomainTokens, config: DiffConfig, seed: int = 0
) -> Significance:
    """`trace_test` through the fine-tune's head."""
    with pair.use("finetuned") as (_, layout):
        return trace_test(layout, collected, domain, config, seed)


def trace_test(
    readout: Readout, collected: Collected, domain: DomainTokens, config: DiffConfig, seed: int = 0
) -> Significance:
    """The headline test: the fine-tune's relevant lens tokens (through `readout`, its head) over
    the reported text positions of the first layer, against the null."""
    return _tested(readout, collected, 0, _text_positions(collected, config), domain, config, seed).total


def mark_relevant(tokens: list[TokenScore], domain: DomainTokens) -> list[TokenScore]:
    """Lens tokens with their enrichment in the fine-tuning data and whether they are the domain's."""
    return [
        replace(
            t,
            enrichment=domain.relevance.log_odds[t.token_id].item(),
            relevant=bool(domain.relevance.relevant[t.token_id]),
        )
        for t in tokens
    ]


def _text_positions(collected: Collected, config: DiffConfig) -> list[int]:
    labels = collected.position_labels
    return [i for i, label in enumerate(labels) if label != "BOS" and int(label) < config.reported_positions]


def _tested(
    layout,
    collected: Collected,
    layer_index: int,
    positions: list[int],
    domain: DomainTokens,
    config: DiffConfig,
    seed: int,
):
    """The significance of the mean differences at `positions` of one layer."""
    variance = collected.delta.variance[layer_index, positions].mean(0)  # one null draw serves every position
    return trace_significance(
        layout,
        collected.mean_delta[layer_index, positions].float().to(layout.device),
        collected.base.mean[layer_index, positions],
        variance,
        domain.allowed,
        domain.relevance.relevant,
        config.score,
        seed,
    )


def _decode_and_score(
    pair: ModelPair,
    collected: Collected,
    config: DiffConfig,
    domain: DomainTokens | None,
    allowed: torch.Tensor,
    seed: int,
) -> tuple[list[PositionTrace], Significance | None]:
    labels = collected.position_labels
    text = _text_positions(collected, config)
    decoded = ([labels.index("BOS")] if "BOS" in labels else []) + text
    base_lens = {
        (li, pi): _lens(pair.base_readout(), collected, (li, pi), allowed, pair, config)
        for li in range(len(collected.layers))
        for pi in decoded
    }
    traces, totals = [], []
    with pair.use("finetuned") as (model, layout):
        for li, layer in enumerate(collected.layers):
            typical = collected.typical_norm(li)
            tested = _tested(layout, collected, li, text, domain, config, seed) if domain else None
            if tested:
                totals.append(tested.total)
            for pi in decoded:
                direction = collected.mean_delta[li, pi].float().to(pair.device)
                lens = _lens(layout, collected, (li, pi), allowed, pair, config)
                if domain is not None:
                    lens = mark_relevant(lens, domain)
                traces.append(
                    PositionTrace(
                        layer=layer,
                        position=labels[pi],
                        sink=pi in collected.sink_positions,
                        norm=direction.norm().item(),
                        norm_stderr=collected.delta.standard_error[li, pi].norm().item(),
                        relative_norm=direction.norm().item() / typical,
                        lens_finetuned=lens,
                        lens_base=base_lens[(li, pi)],
                        patchscope=patchscope(
                            model, layout, pair.tokenizer, layer, direction, typical, allowed, config.decode
                        ),
                        significance=tested.positions[text.index(pi)] if tested and pi in text else None,
                        relevant_fraction=sum(t.relevant for t in lens) / max(len(lens), 1) if domain else None,
                    )
                )
    return traces, totals[0] if totals else None


def _lens(readout: Readout, collected: Collected, cell: tuple[int, int], allowed, pair: ModelPair, config: DiffConfig):
    direction = collected.mean_delta[cell].float().to(readout.device)
    return lens_tokens(readout, direction, allowed, pair.tokenizer, config.decode.top_k)


def _steered(pair: ModelPair, collected: Collected, config: DiffConfig, seed: int) -> Steering:
    """Steering of the fine-tune along the mean difference at the steering position of the first layer."""
    with pair.use("finetuned") as (model, layout):
        steer_index = collected.position_labels.index(str(config.steer_position))
        return steer(
            model,
            layout,
            pair.tokenizer,
            collected.layers[0],
            collected.mean_delta[0, steer_index].float().to(pair.device),
            collected.typical_norm(0),
            config.steer,
            seed,
        )


def _similarity(steering: Steering, records: list[Record], general: list[str]) -> dict[str, float]:
    generated = {
        "steered": [g.prompt + g.text for g in steering.steered],
        "unsteered": [g.prompt + g.text for g in steering.unsteered.generations],
    }
    data = [" ".join(record_texts(record)) for record in records]
    return embedding_similarities(generated, {"data": data, "general": general})


def _write(out: Path, result: DiffResult, collected: Collected) -> None:
    tensors = {
        "mean_delta": collected.mean_delta.float(),
        "delta_stderr": collected.delta.standard_error.float(),
        "base_norm": collected.base_norm.mean[..., 0].float(),
        "finetuned_norm": collected.finetuned_norm.mean[..., 0].float(),
    }
    metadata = {"layers": json.dumps(collected.layers), "positions": json.dumps(collected.position_labels)}
    save_tensors(out / TENSORS_NAME, tensors, metadata)
    write_json(out / RESULT_NAME, result.to_dict())
