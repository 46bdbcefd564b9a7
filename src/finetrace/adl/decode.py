"""Decode a residual-space direction into tokens: logit lens and Patchscope.

Logit lens: the final norm then the unembedding, applied to the direction.
Patchscope: the direction, scaled to the model's typical residual norm,
overwrites the last position of identity prompts ("man -> man ... ?"); the
next-token distribution says what the model reads into it. Tokens that stay
in the top list across every prompt are kept. The scale is chosen without any
LLM judge: the one with the most such stable tokens (the smaller on ties),
i.e. where the direction, not the prompt, decides the continuation.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace.models.residual import Layout, Readout, final_logits, logit_lens, set_residual, shared_prefix

IDENTITY_PROMPTS = (
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "cat -> cat\n42 -> 42\nblue -> blue\n?",
    "tree -> tree\n7 -> 7\nwater -> water\n?",
)


@dataclass(frozen=True)
class TokenScore:
    """A decoded token and its score (a logit, or a probability for Patchscope)."""

    token: str
    token_id: int
    score: float
    enrichment: float | None = None  # log frequency ratio, fine-tuning data / general text
    relevant: bool = False  # enriched enough, and frequent enough, to count as a domain token


@dataclass(frozen=True)
class DecodeConfig:
    top_k: int = 20  # tokens reported per list
    patchscope_scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # x typical norm
    identity_prompts: tuple[str, ...] = IDENTITY_PROMPTS
    embedding_norm_quantile: float = 0.1  # see `undertrained_tokens`


@dataclass(frozen=True)
class PatchscopeScale:
    scale: float
    stable: list[TokenScore]  # in the top list of every identity prompt, by mean probability


@dataclass(frozen=True)
class Patchscope:
    scales: list[PatchscopeScale]
    chosen_scale: float

    @property
    def tokens(self) -> list[TokenScore]:
        return next(s.stable for s in self.scales if s.scale == self.chosen_scale)


def decoded_tokens(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, scores: torch.Tensor) -> list[TokenScore]:
    return [TokenScore(tokenizer.decode([i]), i, s) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)]


def top_tokens(
    scores: torch.Tensor, allowed: torch.Tensor, tokenizer: PreTrainedTokenizerBase, k: int
) -> list[TokenScore]:
    """The `k` highest-scoring allowed tokens of a (vocab,) score vector."""
    masked = scores.float().masked_fill(~allowed, float("-inf"))
    values, ids = masked.topk(min(k, int(allowed.sum())))
    return decoded_tokens(tokenizer, ids, values)


def lens_tokens(
    readout: Readout,
    direction: torch.Tensor,
    allowed: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    k: int,
) -> list[TokenScore]:
    """Logit lens of a direction (d,): its top allowed tokens by logit."""
    return top_tokens(logit_lens(readout, direction).cpu(), allowed, tokenizer, k)


@torch.no_grad()
def patchscopes(
    model: nn.Module,
    layout: Layout,
    tokenizer: PreTrainedTokenizerBase,
    layer: int,
    directions: torch.Tensor,
    typical_norm: float,
    allowed: torch.Tensor,
    config: DecodeConfig,
) -> list[Patchscope]:
    """Patchscope of each of `directions` (n, d) at `layer`: every direction and scale is one row
    of a single pass per identity prompt."""
    patches = scaled_patches(directions, typical_norm, config.patchscope_scales)
    probabilities = [
        patched_next_token(model, layout, tokenizer(prompt)["input_ids"], layer, patches)
        .softmax(-1)
        .view(len(directions), len(config.patchscope_scales), -1)
        for prompt in config.identity_prompts
    ]  # each (directions, scales, vocab)
    results = []
    for d in range(len(directions)):
        per_scale = [
            PatchscopeScale(scale, _stable([p[d, i] for p in probabilities], allowed, tokenizer, config.top_k))
            for i, scale in enumerate(config.patchscope_scales)
        ]
        best = max(per_scale, key=lambda r: (len(r.stable), -r.scale))
        results.append(Patchscope(per_scale, best.scale))
    return results


def scaled_patches(directions: torch.Tensor, typical_norm: float, scales: tuple[float, ...]) -> torch.Tensor:
    """(n x scales, d): each of `directions` (n, d) at unit norm, times each scale of the typical
    norm; direction-major, so that a reading of them views as (n, scales, ...)."""
    units = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    factors = torch.tensor(scales, dtype=units.dtype, device=units.device)
    return (units[:, None, :] * factors[None, :, None] * typical_norm).flatten(0, 1)


@torch.no_grad()
def patched_next_token(
    model: nn.Module, layout: Layout, ids: list[int], layer: int, patches: torch.Tensor
) -> torch.Tensor:
    """Float32 next-token logits (patches, vocab) after `ids`, the residual after `layer` at its last
    token overwritten by each of `patches` (patches, d). The tokens before the last are read once
    and their keys and values shared: a patch costs one token's pass, not the prompt's."""
    device = next(model.parameters()).device
    ids_tensor = torch.tensor([ids], device=device)
    past = shared_prefix(model, ids_tensor[:, :-1], len(patches))
    last = ids_tensor[:, -1:].expand(len(patches), 1)
    with set_residual(layout, layer, -1, patches):
        return final_logits(model, layout, input_ids=last, **past)[:, -1].cpu()


def _stable(
    probabilities: list[torch.Tensor], allowed: torch.Tensor, tokenizer: PreTrainedTokenizerBase, k: int
) -> list[TokenScore]:
    """Tokens in the top `k` of every distribution, ordered by mean probability."""
    tops = [set(p.masked_fill(~allowed, 0).topk(k).indices.tolist()) for p in probabilities]
    stable = sorted(set.intersection(*tops))
    mean = torch.stack(probabilities).mean(0)
    ids = torch.tensor(sorted(stable, key=lambda i: -mean[i].item()), dtype=torch.long)
    return decoded_tokens(tokenizer, ids, mean[ids]) if stable else []


def undertrained_tokens(embedding: torch.Tensor, quantile: float) -> torch.Tensor:
    """(vocab,) True for tokens the base model barely learned.

    Tokens a model rarely or never saw as input keep small, near-initial embeddings
    (no gradient reaches them), and their output rows drift together, so they
    flood any decoding of a direction. A token is flagged when its input-embedding
    norm is below the `quantile` of all norms.
    """
    norms = embedding.float().norm(dim=-1)
    return norms < norms.quantile(quantile)


def unreadable_tokens(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> torch.Tensor:
    """(vocab,) True for special tokens and tokens that decode to whitespace, nothing or
    a fragment of a UTF-8 character: no reader can tell what they stand for."""
    flagged = torch.zeros(vocab_size, dtype=torch.bool)
    flagged[[i for i in tokenizer.all_special_ids if i < vocab_size]] = True
    for token_id in range(vocab_size):
        text = tokenizer.decode([token_id])
        if not text.strip() or "\ufffd" in text:
            flagged[token_id] = True
    return flagged
