"""Collect the mean activation difference, fine-tuned minus base, per layer and position.

Causal attention makes the residual at position p independent of later tokens,
so only the first k tokens of each text go through the models (the paper reads
positions 0-4 of longer texts; truncating changes nothing there), and the
forward pass stops after the deepest requested layer. One model is loaded at a
time: the base reads every text first and its residuals go to disk (texts x
layers x k x d in the model's dtype: 10,000 x 1 x 9 x 4096 in bf16 is 0.7 GB),
then the fine-tune reads the same tokens, and float64 running sums of the
differences keep memory independent of the number of texts. Both passes
checkpoint, so an interrupted run resumes where it stopped, and only a run with
the same weights, tokenizer, corpus and settings resumes them.

Under `torchrun` or `accelerate launch` each process reads every n-th shard of
the corpus and keeps its own checkpoint; the sums are added across processes
once, at the end, so every process returns the moments of the whole corpus.

Every text starts with the special tokens the tokenizer prepends (a BOS, or
none), then its first k tokens; padding is masked, so no pad token is needed.
The first position is the attention sink, with an outsized norm: the BOS, or
the first text token for models that add none (GPT-2, Qwen).
"""

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace._util.distributed import processes, sum_across
from finetrace._util.fingerprints import data_sha256, json_sha256
from finetrace._util.progress import progress_bar
from finetrace._util.terminal import escape
from finetrace.adl.moments import RunningMoments, load_moments, load_tensors, read_metadata, save_moments, save_tensors
from finetrace.corpus import iter_texts
from finetrace.errors import FinetraceError
from finetrace.models.likelihood import padded
from finetrace.models.load import chars_holding, pad_token_id, prepended_ids, weights_digest
from finetrace.models.pair import ModelPair
from finetrace.models.residual import Layout, read_residuals

CHECKPOINT_NAME = "collect-checkpoint.safetensors"
BASE_STORE = "base-residuals"
MOMENT_NAMES = ["delta", "base_norm", "finetuned_norm", "base"]


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
    position_labels: list[str]  # "BOS" where the tokenizer prepends one, then "0", "1", ...
    delta: RunningMoments  # finetuned - base residual, cells (layers, positions), width d
    base_norm: RunningMoments  # L2 norm of the base residual, width 1
    finetuned_norm: RunningMoments  # L2 norm of the fine-tuned residual, width 1
    base: RunningMoments  # the base residual itself, width d: its mean is the typical activation
    texts: int = 0  # texts consumed so far
    shards: int = 0  # base-pass shards the fine-tune has read
    complete: bool = False

    @classmethod
    def zeros(cls, layers: list[int], labels: list[str], width: int) -> "Collected":
        cells = (len(layers), len(labels))
        return cls(
            layers,
            labels,
            RunningMoments.zeros(cells, width),
            RunningMoments.zeros(cells, 1),
            RunningMoments.zeros(cells, 1),
            RunningMoments.zeros(cells, width),
        )

    @property
    def mean_delta(self) -> torch.Tensor:  # (layers, positions, d)
        return self.delta.mean

    @property
    def sink_positions(self) -> list[int]:
        """Positions every text spends on the attention sink: the first one, be it the BOS or,
        for models that add none, the first text token. Their norm is outsized, many times
        that of the others, so it stays out of `typical_norm`."""
        return [0]

    def typical_norm(self, layer_index: int) -> float:
        """Mean fine-tuned residual norm over the positions that are not a sink: the scale of
        Patchscope and steering."""
        kept = [i for i in range(len(self.position_labels)) if i not in self.sink_positions]
        return self.finetuned_norm.mean[layer_index, kept].mean().item()


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
    pair: ModelPair,
    corpus: str | Path,
    config: CollectConfig,
    out: Path,
    text_field: str = "text",
    base_store: Path | None = None,
    keep_base: bool = False,
) -> Collected:
    """Mean differences over the first `config.samples` texts of `corpus`, resuming from `out`.

    The base reads every text first, its residuals stored in shards under `base_store` (default
    `out/base-residuals`; a control with the same base and settings can share them, if `keep_base`
    leaves them there); then the fine-tune reads the same token ids. One model is loaded at a time.
    """
    layers = resolve_layers(config.layers, pair.n_layers)
    prefix = prepended_ids(pair.tokenizer)
    labels = position_labels(prefix, config.positions)
    store = base_store or out / BASE_STORE
    share = processes()
    base_fingerprint = _fingerprint(pair, corpus, config, layers, text_field)
    fingerprint = hashlib.sha256(
        f"{base_fingerprint}:{weights_digest(pair.finetuned_name)}:{share.process_index}/{share.num_processes}".encode()
    ).hexdigest()
    checkpoint = out / _checkpoint_name(share.process_index, share.num_processes)
    state = _resume(checkpoint, fingerprint, layers, labels)
    if state is None or not state.complete:
        shards = _base_pass(pair, corpus, config, layers, prefix, store, base_fingerprint, text_field)
        state = _finetuned_pass(
            pair,
            state or Collected.zeros(layers, labels, pair.hidden_size),
            shards,
            config.batch_size,
            checkpoint,
            fingerprint,
        )
    state = _whole_corpus(state)  # every process is done reading its base shards after this
    if not keep_base and share.is_main_process:
        shutil.rmtree(store, ignore_errors=True)
    if state.texts == 0:
        raise FinetraceError(f"corpus {corpus} holds no texts")
    _refuse_non_finite(state)
    return state


def _base_pass(
    pair: ModelPair,
    corpus: str | Path,
    config: CollectConfig,
    layers: list[int],
    prefix: list[int],
    store: Path,
    fingerprint: str,
    text_field: str,
) -> list[Path]:
    """Shards of the base's residuals, `checkpoint_every` batches each: the token ids, the mask
    and the residuals in the model's dtype. A shard of the same base and settings is kept."""
    window = config.batch_size * config.checkpoint_every
    texts = islice(iter_texts(corpus, text_field), config.samples)
    share = processes()
    shards = []
    own_windows = -(-config.samples // (window * share.num_processes))
    with progress_bar("base model", own_windows) as advance:
        for index, chunk in enumerate(_batches(texts, window)):
            if index % share.num_processes != share.process_index:
                continue  # another process's shard
            path = store / f"{index:06d}.safetensors"
            if not (path.exists() and read_metadata(path).get("fingerprint") == fingerprint):
                save_tensors(
                    path,
                    _base_shard(pair, chunk, layers, prefix, config),
                    {"fingerprint": fingerprint, "texts": str(len(chunk))},
                )
            shards.append(path)
            advance()
    return shards


def _base_shard(
    pair: ModelPair, texts: list[str], layers: list[int], prefix: list[int], config: CollectConfig
) -> dict[str, torch.Tensor]:
    ids, attention = first_tokens(pair.tokenizer, texts, prefix, config.positions)
    with pair.use("base") as (model, layout):
        residuals = layer_residuals(model, layout, layers, ids, attention, config.batch_size)
    return {"ids": ids, "attention": attention, "residuals": residuals}


def _finetuned_pass(
    pair: ModelPair, state: Collected, shards: list[Path], batch_size: int, checkpoint: Path, fingerprint: str
) -> Collected:
    """The fine-tune reads each shard's ids; the moments are checkpointed after every shard."""
    with progress_bar("fine-tuned model", len(shards) - state.shards) as advance:
        for path in shards[state.shards :]:
            shard, metadata = load_tensors(path)
            for i in range(0, len(shard["ids"]), batch_size):
                ids, attention = shard["ids"][i : i + batch_size], shard["attention"][i : i + batch_size]
                base = shard["residuals"][i : i + batch_size].float()
                with pair.use("finetuned") as (model, layout):
                    finetuned = layer_residuals(model, layout, state.layers, ids, attention, batch_size).float()
                accumulate(state, base, finetuned, attention)
            state.texts += int(metadata["texts"])
            state.shards += 1
            _checkpoint(checkpoint, state, fingerprint, complete=state.shards == len(shards))
            advance()
    state.complete = True
    return state


def _whole_corpus(state: Collected) -> Collected:
    """This process's sums added to every other process's: the moments of the whole corpus."""
    if processes().num_processes == 1:
        return state
    moments = [getattr(state, name) for name in MOMENT_NAMES]
    counts = torch.tensor([state.texts, state.shards], dtype=torch.float64)
    summed = [RunningMoments(m.count.clone(), m.total.clone(), m.total_sq.clone()) for m in moments]
    sum_across([tensor for m in summed for tensor in (m.count, m.total, m.total_sq)] + [counts])
    texts, shards = (int(n) for n in counts.tolist())
    return Collected(state.layers, state.position_labels, *summed, texts, shards, complete=True)


def _checkpoint_name(rank: int, count: int) -> str:
    """One checkpoint per process, so each resumes its own share of the corpus."""
    return CHECKPOINT_NAME if count == 1 else CHECKPOINT_NAME.replace(".", f"-{rank}-of-{count}.", 1)


def accumulate(state: Collected, base: torch.Tensor, finetuned: torch.Tensor, attention: torch.Tensor) -> None:
    """Add one batch of float32 residuals of both models, (B, L, T, d), to the sums."""
    mask = attention.unsqueeze(1).expand(-1, len(state.layers), -1)  # (B, L, T)
    state.delta.add(finetuned - base, mask)
    state.base_norm.add(base.norm(dim=-1, keepdim=True), mask)
    state.base.add(base, mask)
    state.finetuned_norm.add(finetuned.norm(dim=-1, keepdim=True), mask)


def first_tokens(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], prefix: list[int], positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids, attention)` of the texts' first `positions` tokens after `prefix` (what the tokenizer
    prepends), padded to one width; a text with no token and no prefix is left out."""
    rows = [prefix + ids for ids in text_ids(tokenizer, texts, positions) if prefix + ids]
    return padded(rows, pad_token_id(tokenizer), len(prefix) + positions)


def layer_residuals(
    model: nn.Module, layout: Layout, layers: list[int], ids: torch.Tensor, attention: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Residuals after each of `layers`, (texts, layers, T, d), in the model's dtype, on the CPU."""
    embedding = model.get_input_embeddings().weight
    batches = [torch.zeros((0, len(layers), ids.shape[1], embedding.shape[1]), dtype=embedding.dtype)]  # no texts
    for start in range(0, len(ids), batch_size):
        by_layer = read_residuals(
            model,
            layout,
            layers,
            input_ids=ids[start : start + batch_size].to(embedding.device),
            attention_mask=attention[start : start + batch_size].to(embedding.device),
        )
        batches.append(torch.stack([by_layer[layer] for layer in layers], dim=1).cpu())
    return torch.cat(batches)


def text_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str], positions: int) -> list[list[int]]:
    """The first `positions` tokens of each text, without special tokens."""
    limit = chars_holding(tokenizer, positions)
    encoded = tokenizer(
        [text[:limit] for text in texts], add_special_tokens=False, truncation=True, max_length=positions
    )
    return encoded["input_ids"]


def position_labels(prefix: list[int], positions: int) -> list[str]:
    if len(prefix) > 1:
        raise FinetraceError(
            f"the tokenizer puts {len(prefix)} special tokens {prefix} before "
            f"every text; finetrace reads one BOS position at most"
        )
    if not prefix and positions < 2:
        raise FinetraceError(
            "this tokenizer adds no BOS, so text position 0 is the attention "
            "sink; read 2 or more positions (--positions) to have text beside it"
        )
    return ["BOS"] * len(prefix) + [str(p) for p in range(positions)]


def _refuse_non_finite(state: Collected) -> None:
    """A NaN or inf residual poisons every mean it enters: name where it came from."""
    for what, moments in (
        ("base model's residual", state.base_norm),
        ("fine-tuned model's residual", state.finetuned_norm),
        ("difference of the residuals", state.delta),
    ):
        broken = (~torch.isfinite(moments.mean)).any(-1).nonzero()
        if len(broken):
            layer, position = broken[0].tolist()
            raise FinetraceError(
                f"the {what} after layer {state.layers[layer]} at position "
                f"{state.position_labels[position]} is not finite (NaN or inf): the model "
                f"overflows in its dtype; load it in float32 (--dtype float32)"
            )


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(texts, size)):
        yield batch


def _fingerprint(pair: ModelPair, corpus: str | Path, config: CollectConfig, layers: list[int], text_field: str) -> str:
    """What decides the base's residuals, bit for bit: a shard is reused only when all of it
    matches, and the sums only when the fine-tune's weights match as well."""
    described = {
        "base": weights_digest(pair.base_name),
        "dtype": str(pair.dtype),
        "device": pair.device.type,
        "tokenizer": _tokenizer_digest(pair.tokenizer),
        "corpus": data_sha256(corpus),
        "text_field": text_field,
        "layers": layers,
        "positions": config.positions,
        "samples": config.samples,
        "batch_size": config.batch_size,
        "moments": MOMENT_NAMES,
    }
    return json_sha256(described)


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's vocabulary and processing, and of the tokens it prepends."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        described = {"vocab": sorted(tokenizer.get_vocab().items())}
    else:  # tokenizer.json, less the truncation and padding that each call sets anew
        described = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    described["prepended"] = prepended_ids(tokenizer)
    return json_sha256(described)


def _checkpoint(path: Path, state: Collected, fingerprint: str, complete: bool) -> None:
    moments = {name: getattr(state, name) for name in MOMENT_NAMES}
    save_moments(
        path,
        moments,
        {"fingerprint": fingerprint, "texts": str(state.texts), "shards": str(state.shards), "complete": str(complete)},
    )


def _resume(path: Path, fingerprint: str, layers: list[int], labels: list[str]) -> Collected | None:
    if not path.exists():
        return None
    if read_metadata(path).get("fingerprint") != fingerprint:
        Console(stderr=True).print(
            f"[yellow]{escape(str(path))} holds no sums of this run (it is damaged, or from other weights, "
            f"tokenizer, corpus or settings): starting afresh[/]",
            highlight=False,
        )
        return None
    moments, metadata = load_moments(path, MOMENT_NAMES)
    return Collected(
        layers,
        labels,
        moments["delta"],
        moments["base_norm"],
        moments["finetuned_norm"],
        moments["base"],
        int(metadata["texts"]),
        int(metadata["shards"]),
        metadata["complete"] == "True",
    )
