"""`finetrace diff`: the whole Activation Difference Lens on one model pair.

collect the mean differences -> decode each reported position (logit lens
through both heads, Patchscope) -> score (coherence against a null, and token
enrichment when the fine-tuning data is given) -> steer with the difference.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from finetrace.adl.collect import CollectConfig, Collected, collect
from finetrace.adl.decode import (DecodeConfig, Patchscope, TokenScore, lens_tokens, patchscope,
                                  undertrained_tokens)
from finetrace.adl.score import (ScoreConfig, Significance, enrichment, output_geometry,
                                 relevant_tokens, significance, token_counts)
from finetrace.adl.steer import SteerConfig, Steering, steer
from finetrace.corpus import iter_texts, read_records
from finetrace.pair import ModelPair, load_pair
from finetrace.provenance import environment

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
    significance: Significance
    relevant_fraction: float | None  # of lens_finetuned, when the fine-tuning data was given


@dataclass(frozen=True)
class DiffResult:
    """Everything a diff found; written as `diff.json`."""

    base: str
    finetuned: str
    adapter: bool
    corpus: str
    texts: int
    traces: list[PositionTrace]
    steering: Steering
    trace_strength: float  # mean z-score of the reported positions at the first layer
    p_value: float  # smallest p-value of those positions, Bonferroni-corrected
    config: DiffConfig
    environment: dict[str, str]
    seconds: dict[str, float]
    similarity: dict[str, float] | None = None  # steered/unsteered vs data/general text
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diff(
    base: str | Path, finetuned: str | Path, corpus: str | Path, out: str | Path,
    config: DiffConfig = DiffConfig(), data: str | Path | None = None,
) -> DiffResult:
    """Read what the fine-tune was about from activation differences on `corpus`.

    Args:
        base: the base model (a directory or a hub id).
        finetuned: the fine-tuned model, or a PEFT adapter directory for `base`.
        corpus: unrelated text: `.txt`, `.jsonl`, `.parquet` or a dataset id (streamed).
        out: output directory (differences, `diff.json`, and a checkpoint to resume from).
        config: settings of every stage.
        data: the fine-tuning data, when known: enables token relevance and similarity scores.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    pair = load_pair(base, finetuned, config.device, config.dtype)
    clock.lap("load")
    collected = collect(pair, corpus, config.collect, out, config.text_field)
    clock.lap("collect")
    data_texts = _data_texts(data) if data is not None else None
    relevant = None
    if data_texts is not None:
        general = list(iter_texts(corpus, config.text_field))[: config.collect.samples]
        counts = token_counts(pair.tokenizer, data_texts)
        scores = enrichment(counts, token_counts(pair.tokenizer, general), len(pair.tokenizer))
        relevant = (scores, relevant_tokens(scores, counts, config.score))
    traces = _decode_and_score(pair, collected, config, relevant)
    clock.lap("decode")
    with pair.use("finetuned") as (model, layout):
        steer_index = collected.position_labels.index(str(config.steer_position))
        steering = steer(model, layout, pair.tokenizer, collected.layers[0],
                         collected.mean_delta[0, steer_index].float().to(pair.device),
                         _typical_norm(collected, 0), config.steer)
    clock.lap("steer")
    similarity = _similarity(steering, data_texts, corpus, config) if data_texts is not None else None
    headline = [t for t in traces if t.layer == collected.layers[0] and t.position != "BOS"]
    result = DiffResult(
        base=str(base), finetuned=str(finetuned), adapter=pair.adapter, corpus=str(corpus),
        texts=collected.texts, traces=traces, steering=steering,
        trace_strength=sum(t.significance.z for t in headline) / len(headline),
        p_value=min(1.0, min(t.significance.p_value for t in headline) * len(headline)),
        config=config, environment=environment(pair.device), seconds=clock.laps, similarity=similarity,
    )
    _write(out, result, collected)
    return result


def _decode_and_score(
    pair: ModelPair, collected: Collected, config: DiffConfig, relevant: tuple | None
) -> list[PositionTrace]:
    labels = collected.position_labels
    reported = [i for i, label in enumerate(labels) if label == "BOS" or int(label) < config.reported_positions]
    cells = [(li, pi) for li in range(len(collected.layers)) for pi in reported]
    with pair.use("base") as (model, layout):
        embedding = model.get_input_embeddings().weight.detach()
        allowed = ~undertrained_tokens(embedding, pair.tokenizer, config.decode.embedding_norm_quantile)
        geometry = output_geometry(layout, allowed)
        base_lens = {c: _lens(layout, collected, c, allowed, pair, config) for c in cells}
    traces = []
    with pair.use("finetuned") as (model, layout):
        for li, pi in cells:
            direction = collected.mean_delta[li, pi].float().to(pair.device)
            lens = _lens(layout, collected, (li, pi), allowed, pair, config)
            if relevant is not None:
                scores, mask = relevant
                lens = [replace(t, enrichment=scores[t.token_id].item()) for t in lens]
                fraction = sum(bool(mask[t.token_id]) for t in lens) / max(len(lens), 1)
            else:
                fraction = None
            typical = _typical_norm(collected, li)
            traces.append(PositionTrace(
                layer=collected.layers[li],
                position=labels[pi],
                norm=direction.norm().item(),
                norm_stderr=collected.delta.standard_error[li, pi].norm().item(),
                relative_norm=direction.norm().item() / typical,
                lens_finetuned=lens,
                lens_base=base_lens[(li, pi)],
                patchscope=patchscope(model, layout, pair.tokenizer, collected.layers[li], direction,
                                      typical, allowed, config.decode),
                significance=significance(layout, direction, collected.delta.variance[li, pi],
                                          allowed, geometry, _null_config(labels[pi], config.score)),
                relevant_fraction=fraction,
            ))
    return traces


def _null_config(position: str, config: ScoreConfig) -> ScoreConfig:
    # Every text starts with the same BOS, so its difference has no spread to shape a null with.
    return replace(config, null="isotropic") if position == "BOS" else config


def _lens(layout, collected: Collected, cell: tuple[int, int], allowed, pair: ModelPair, config: DiffConfig):
    direction = collected.mean_delta[cell].float().to(pair.device)
    return lens_tokens(layout, direction, allowed, pair.tokenizer, config.decode.top_k)


def _typical_norm(collected: Collected, layer_index: int) -> float:
    """Mean fine-tuned residual norm over text positions (BOS often carries an outsized norm)."""
    text = [i for i, label in enumerate(collected.position_labels) if label != "BOS"]
    return collected.finetuned_norm.mean[layer_index, text].mean().item()


def _data_texts(data: str | Path) -> list[str]:
    return [r["text"] if "text" in r else " ".join(m["content"] for m in r["messages"])
            for r in read_records(data)]


def _similarity(steering: Steering, data_texts: list[str], corpus, config: DiffConfig) -> dict[str, float]:
    from finetrace.adl.score import embedding_similarity

    general = list(iter_texts(corpus, config.text_field))[: len(data_texts)]
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


@dataclass
class _Clock:
    laps: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.start, 3)
        self.start = now
