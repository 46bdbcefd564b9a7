"""`finetrace diff`: the whole Activation Difference Lens on one model pair.

collect the mean differences -> decode each reported position (logit lens
through both heads, Patchscope) -> score (relevant lens tokens against a null
of random directions) -> steer with the difference.
"""

import json
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from finetrace.adl.collect import CollectConfig, Collected, collect
from finetrace.adl.decode import (DecodeConfig, Patchscope, TokenScore, lens_tokens, patchscope,
                                  undertrained_tokens)
from finetrace.adl.score import (ScoreConfig, Significance, enrichment, relevant_tokens,
                                 token_counts, trace_significance)
from finetrace.adl.steer import SteerConfig, Steering, generate, steer
from finetrace.corpus import Record, iter_texts, read_records, record_texts
from finetrace.models import resolve_device
from finetrace.pair import ModelPair, load_pair
from finetrace.fingerprints import environment
from finetrace.timing import Stopwatch

SCHEMA_VERSION = 1
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
    device: str = "auto"
    dtype: str = "auto"
    text_field: str = "text"


@dataclass(frozen=True)
class PositionTrace:
    """What the mean difference at one (layer, position) says."""

    layer: int
    position: str  # "BOS", "0", "1", ...
    norm: float  # L2 norm of the mean difference
    norm_stderr: float  # L2 norm of its per-dimension standard errors
    relative_norm: float  # norm / typical norm of the fine-tuned residual there
    lens_finetuned: list[TokenScore]  # logit lens through the fine-tuned model's head
    lens_base: list[TokenScore]  # ... and through the base model's head
    patchscope: Patchscope
    significance: Significance  # relevant tokens in lens_finetuned against the null
    relevant_fraction: float  # of lens_finetuned


@dataclass(frozen=True)
class DiffResult:
    """Everything a diff found; written as `diff.json`."""

    base: str
    finetuned: str
    adapter: bool
    corpus: str
    texts: int
    relevance_source: str  # "data" (the fine-tuning data) or "generations" (the pair's own)
    traces: list[PositionTrace]
    steering: Steering
    significance: Significance  # relevant tokens summed over the text positions of the first layer
    config: DiffConfig
    environment: dict[str, str]
    seconds: dict[str, float]
    similarity: dict[str, float] | None = None  # steered/unsteered vs data/general text
    control: str | None = None
    control_significance: Significance | None = None  # the control's trace, scored the same way
    schema_version: int = SCHEMA_VERSION

    @property
    def trace_strength(self) -> float:
        """The headline: z-score of the summed relevant-token count."""
        return self.significance.z

    @property
    def p_value(self) -> float:
        return self.significance.p_value

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trace_strength": self.trace_strength, "p_value": self.p_value}


def diff(
    base: str | Path, finetuned: str | Path, corpus: str | Path, out: str | Path,
    config: DiffConfig = DiffConfig(), data: str | Path | None = None,
    control: str | Path | None = None, pair: ModelPair | None = None,
) -> DiffResult:
    """Read what the fine-tune was about from activation differences on `corpus`.

    Args:
        base: the base model (a directory or a hub id).
        finetuned: the fine-tuned model, or a PEFT adapter directory for `base`.
        corpus: unrelated text: `.txt`, `.jsonl`, `.parquet` or a dataset id (streamed).
        out: output directory (differences, `diff.json`, and a checkpoint to resume from).
        config: settings of every stage.
        data: the fine-tuning data, when known: relevance from it, and similarity scores.
        control: a control fine-tune of `base` (same recipe, unrelated data): its trace is
            scored the same way, as a second reference next to the random directions.
        pair: `base` and `finetuned` already loaded (`load_pair`), to share one load between analyses.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch()
    pair = pair or load_pair(base, finetuned, config.device, config.dtype)
    clock.lap("load")
    collected = collect(pair, corpus, config.collect, out, config.text_field)
    clock.lap("collect")
    records = read_records(data) if data is not None else None
    general = None if data is None else list(islice(iter_texts(corpus, config.text_field), config.collect.samples))
    scores, relevant = _relevance(pair, collected, records, general, config)
    clock.lap("relevance")
    with pair.use("base") as (model, _):
        allowed = _allowed(model, pair, config)
    traces, total = _decode_and_score(pair, collected, config, scores, relevant, allowed)
    clock.lap("decode")
    with pair.use("finetuned") as (model, layout):
        steer_index = collected.position_labels.index(str(config.steer_position))
        steering = steer(model, layout, pair.tokenizer, collected.layers[0],
                         collected.mean_delta[0, steer_index].float().to(pair.device),
                         collected.typical_norm(0), config.steer)
    clock.lap("steer")
    similarity = _similarity(steering, records, general) if records is not None else None
    control_significance, adapter = None, pair.adapter
    if control is not None:
        del pair  # one pair in memory at a time, unless the caller holds it
        control_significance = _control_significance(base, control, corpus, out, config, relevant, allowed)
        clock.lap("control")
    result = DiffResult(
        base=str(base), finetuned=str(finetuned), adapter=adapter, corpus=str(corpus),
        texts=collected.texts, relevance_source="data" if records is not None else "generations",
        traces=traces, steering=steering, significance=total, config=config,
        environment=environment(resolve_device(config.device)), seconds=clock.laps,
        similarity=similarity, control=str(control) if control else None,
        control_significance=control_significance,
    )
    _write(out, result, collected)
    return result


def _relevance(
    pair: ModelPair, collected: Collected, records: list[Record] | None, general: list[str] | None,
    config: DiffConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(enrichment, relevant) over the vocabulary: from the fine-tuning data against the
    general corpus when given, else from the fine-tuned model's generations against the base's."""
    if records is not None:
        # Turn by turn: a chat answer starts a text, so its first word is tokenized as the model writes it.
        domain, reference = [text for record in records for text in record_texts(record)], general
    else:
        sampling = replace(config.steer, samples_per_prompt=config.score.generations_per_prompt,
                           max_new_tokens=config.score.generation_tokens)
        texts = {}
        for which in ("finetuned", "base"):
            with pair.use(which) as (model, layout):
                generations = generate(model, layout, pair.tokenizer, collected.layers[0], None, sampling)
                texts[which] = [g.prompt + g.text for g in generations]
        domain, reference = texts["finetuned"], texts["base"]
    counts = token_counts(pair.tokenizer, domain)
    scores = enrichment(counts, token_counts(pair.tokenizer, reference), len(pair.tokenizer))
    return scores, relevant_tokens(scores, counts, config.score)


def _allowed(base_model, pair: ModelPair, config: DiffConfig) -> torch.Tensor:
    """(vocab,) tokens the base learned well enough to appear in token lists."""
    embedding = base_model.get_input_embeddings().weight.detach()
    return ~undertrained_tokens(embedding, pair.tokenizer, config.decode.embedding_norm_quantile)


def _text_positions(collected: Collected, config: DiffConfig) -> list[int]:
    labels = collected.position_labels
    return [i for i, label in enumerate(labels) if label != "BOS" and int(label) < config.reported_positions]


def _control_significance(base, control, corpus, out: Path, config: DiffConfig,
                          relevant: torch.Tensor, allowed: torch.Tensor) -> Significance:
    """The control fine-tune's relevant-token count at the first layer, against its own null."""
    pair = load_pair(base, control, config.device, config.dtype)
    collected = collect(pair, corpus, config.collect, out / "control", config.text_field)
    text = _text_positions(collected, config)
    with pair.use("finetuned") as (_, layout):
        tested = trace_significance(layout, collected.mean_delta[0, text].float().to(pair.device),
                                    collected.delta.variance[0, text], allowed, relevant, config.score,
                                    [config.score.null] * len(text))
    return tested.total


def _decode_and_score(
    pair: ModelPair, collected: Collected, config: DiffConfig, scores: torch.Tensor,
    relevant: torch.Tensor, allowed: torch.Tensor,
) -> tuple[list[PositionTrace], Significance]:
    labels = collected.position_labels
    text = _text_positions(collected, config)
    groups = ([[labels.index("BOS")]] if "BOS" in labels else []) + [text]
    with pair.use("base") as (model, layout):
        base_lens = {(li, pi): _lens(layout, collected, (li, pi), allowed, pair, config)
                     for li in range(len(collected.layers)) for group in groups for pi in group}
    traces, totals = [], []
    with pair.use("finetuned") as (model, layout):
        for li, layer in enumerate(collected.layers):
            typical = collected.typical_norm(li)
            for group in groups:
                # Every text starts with the same BOS, so its difference has no spread to shape a null.
                nulls = ["isotropic" if labels[pi] == "BOS" else config.score.null for pi in group]
                tested = trace_significance(layout, collected.mean_delta[li, group].float().to(pair.device),
                                            collected.delta.variance[li, group], allowed, relevant,
                                            config.score, nulls)
                if group is text:
                    totals.append(tested.total)
                for pi, significance in zip(group, tested.positions):
                    direction = collected.mean_delta[li, pi].float().to(pair.device)
                    lens = [replace(t, enrichment=scores[t.token_id].item(), relevant=bool(relevant[t.token_id]))
                            for t in _lens(layout, collected, (li, pi), allowed, pair, config)]
                    traces.append(PositionTrace(
                        layer=layer,
                        position=labels[pi],
                        norm=direction.norm().item(),
                        norm_stderr=collected.delta.standard_error[li, pi].norm().item(),
                        relative_norm=direction.norm().item() / typical,
                        lens_finetuned=lens,
                        lens_base=base_lens[(li, pi)],
                        patchscope=patchscope(model, layout, pair.tokenizer, layer, direction, typical,
                                              allowed, config.decode),
                        significance=significance,
                        relevant_fraction=sum(t.relevant for t in lens) / max(len(lens), 1),
                    ))
    return traces, totals[0]


def _lens(layout, collected: Collected, cell: tuple[int, int], allowed, pair: ModelPair, config: DiffConfig):
    direction = collected.mean_delta[cell].float().to(pair.device)
    return lens_tokens(layout, direction, allowed, pair.tokenizer, config.decode.top_k)


def _similarity(steering: Steering, records: list[Record], general: list[str]) -> dict[str, float]:
    from finetrace.adl.score import embedding_similarity

    data_texts = [" ".join(record_texts(record)) for record in records]
    general = general[: len(data_texts)]
    steered = [g.prompt + g.text for g in steering.steered]
    unsteered = [g.prompt + g.text for g in steering.unsteered.generations]
    return {
        "steered_to_data": embedding_similarity(steered, data_texts),
        "unsteered_to_data": embedding_similarity(unsteered, data_texts),
        "steered_to_general": embedding_similarity(steered, general),
        "unsteered_to_general": embedding_similarity(unsteered, general),
    }


def _write(out: Path, result: DiffResult, collected: Collected) -> None:
    tensors = {
        "mean_delta": collected.mean_delta.float(),
        "delta_stderr": collected.delta.standard_error.float(),
        "base_norm": collected.base_norm.mean[..., 0].float(),
        "finetuned_norm": collected.finetuned_norm.mean[..., 0].float(),
    }
    metadata = {"layers": json.dumps(collected.layers), "positions": json.dumps(collected.position_labels)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / TENSORS_NAME), metadata=metadata)
    (out / RESULT_NAME).write_text(json.dumps(result.to_dict(), indent=1, allow_nan=True))
