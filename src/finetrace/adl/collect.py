"""Collect the mean activation difference, fine-tuned minus base, per layer and position.

Causal attention makes the residual at position p independent of later tokens,
so only the first k tokens of each text go through the models (the paper reads
positions 0-4 of longer texts; truncating changes nothing there). Both models
see each batch, the forward pass stops after the deepest requested layer, and
float64 running sums keep memory independent of the number of texts. The sums
are checkpointed, so an interrupted run resumes where it stopped.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from finetrace.corpus import iter_texts
from finetrace.errors import FinetraceError
from finetrace.pair import ModelPair
from finetrace.progress import progress_bar
from finetrace.residual import read_residuals
from finetrace.stats import RunningMoments, load_moments, save_moments

CHECKPOINT_NAME = "collect-checkpoint.safetensors"
MOMENT_NAMES = ["delta", "base_norm", "finetuned_norm"]


@dataclass(frozen=True)
class CollectConfig:
    """Which activations to average, over how much text."""

    layers: tuple[float, ...] = (0.5,)  # a float in [0, 1) is a fraction of depth, an int an index
    positions: int = 8  # text tokens per sample that go through the models (k)
    samples: int = 10_000  # texts read from the corpus (all, if it has fewer)
    batch_size: int = 32
    checkpoint_every: int = 20  # batches between checkpoints

    def __post_init__(self) -> None:
        if self.positions < 1 or self.samples < 1 or self.batch_size < 1:
            raise FinetraceError("positions, samples and batch size must be positive")


@dataclass
class Collected:
    """Running moments over texts, per (layer, position)."""

    layers: list[int]
    position_labels: list[str]  # "BOS" for a beginning-of-sequence token, then "0", "1", ...
    delta: RunningMoments  # finetuned - base residual, cells (layers, positions), width d
    base_norm: RunningMoments  # L2 norm of the base residual, width 1
    finetuned_norm: RunningMoments  # L2 norm of the fine-tuned residual, width 1
    texts: int  # texts consumed so far

    @property
    def mean_delta(self) -> torch.Tensor:  # (layers, positions, d)
        return self.delta.mean

    def typical_norm(self, layer_index: int) -> float:
        """Mean fine-tuned residual norm over text positions (BOS often carries an outsized norm)."""
        text = [i for i, label in enumerate(self.position_labels) if label != "BOS"]
        return self.finetuned_norm.mean[layer_index, text].mean().item()


def resolve_layers(spec: tuple[float, ...], n_layers: int) -> list[int]:
    """Layer indices from fractions of depth (the paper's L = int(f * (n_layers - 1))) or indices."""
    layers = []
    for item in spec:
        index = int(item * (n_layers - 1)) if isinstance(item, float) and item < 1 else int(item)
        if not 0 <= index < n_layers:
            raise FinetraceError(f"layer {item} is outside the model's {n_layers} layers")
        layers.append(index)
    return sorted(set(layers))


def collect(
    pair: ModelPair, corpus: str | Path, config: CollectConfig, out: Path, text_field: str = "text"
) -> Collected:
    """Mean differences over the first `config.samples` texts of `corpus`, resuming from `out`."""
    layers = resolve_layers(config.layers, pair.n_layers)
    has_bos = _adds_bos(pair)
    labels = (["BOS"] if has_bos else []) + [str(p) for p in range(config.positions)]
    width = pair.finetuned_model.config.hidden_size
    fingerprint = _fingerprint(pair, corpus, config, layers)
    state = _resume(out / CHECKPOINT_NAME, fingerprint, layers, labels) or Collected(
        layers, labels, RunningMoments.zeros((len(layers), len(labels)), width),
        RunningMoments.zeros((len(layers), len(labels)), 1),
        RunningMoments.zeros((len(layers), len(labels)), 1), 0,
    )
    texts = islice(iter_texts(corpus, text_field), state.texts, config.samples)
    remaining = -(-(config.samples - state.texts) // config.batch_size)
    with progress_bar("collecting", max(remaining, 0)) as advance:
        for number, batch in enumerate(_batches(texts, config.batch_size), start=1):
            _accumulate(pair, state, batch, len(labels))
            advance()
            if number % config.checkpoint_every == 0:
                _checkpoint(out / CHECKPOINT_NAME, state, fingerprint)
    if state.texts == 0:
        raise FinetraceError(f"corpus {corpus} holds no texts")
    _checkpoint(out / CHECKPOINT_NAME, state, fingerprint)
    return state


def _accumulate(pair: ModelPair, state: Collected, texts: list[str], length: int) -> None:
    encoded = pair.tokenizer(texts, truncation=True, max_length=length, padding="max_length",
                             padding_side="right", return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"].to(pair.device),
              "attention_mask": encoded["attention_mask"].to(pair.device)}
    residuals = {}
    for which in ("base", "finetuned"):
        with pair.use(which) as (model, layout):
            by_layer = read_residuals(model, layout, state.layers, **inputs)
            residuals[which] = torch.stack([by_layer[i] for i in state.layers], dim=1).float()  # (B, L, T, d)
    mask = encoded["attention_mask"].unsqueeze(1).expand(-1, len(state.layers), -1).cpu()  # (B, L, T)
    base, finetuned = residuals["base"].cpu(), residuals["finetuned"].cpu()
    state.delta.add(finetuned - base, mask)
    state.base_norm.add(base.norm(dim=-1, keepdim=True), mask)
    state.finetuned_norm.add(finetuned.norm(dim=-1, keepdim=True), mask)
    state.texts += len(texts)


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(texts, size)):
        yield batch


def _adds_bos(pair: ModelPair) -> bool:
    bos = pair.tokenizer.bos_token_id
    return bos is not None and pair.tokenizer("a")["input_ids"][0] == bos


def _fingerprint(pair: ModelPair, corpus: str | Path, config: CollectConfig, layers: list[int]) -> str:
    """What a checkpoint must match to be resumed: models, corpus and settings."""
    described = {"base": pair.base_name, "finetuned": pair.finetuned_name, "corpus": str(corpus),
                 "layers": layers, "positions": config.positions, "samples": config.samples}
    if Path(corpus).is_file():
        described["corpus_bytes"] = Path(corpus).stat().st_size
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _checkpoint(path: Path, state: Collected, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    moments = {name: getattr(state, name) for name in MOMENT_NAMES}
    save_moments(path, moments, {"fingerprint": fingerprint, "texts": str(state.texts)})


def _resume(path: Path, fingerprint: str, layers: list[int], labels: list[str]) -> Collected | None:
    if not path.exists():
        return None
    moments, metadata = load_moments(path, MOMENT_NAMES)
    if metadata.get("fingerprint") != fingerprint:
        return None  # a different run's checkpoint: start afresh
    return Collected(layers, labels, moments["delta"], moments["base_norm"], moments["finetuned_norm"],
                     int(metadata["texts"]))
