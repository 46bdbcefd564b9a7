"""How likely a model finds a continuation of a prompt."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Cache, PreTrainedTokenizerBase

from finetrace.models.load import pad_token_id
from finetrace.models.residual import find_layout, head_inputs, head_logits, padded_positions


@dataclass(frozen=True)
class ContinuationScores:
    logprob: torch.Tensor  # (n,) summed log-probability of each continuation's tokens
    tokens: torch.Tensor  # (n,) how many tokens each continuation adds after the prompt
    greedy: torch.Tensor  # (n,) bool: greedy decoding from the prompt would produce it


# Float32 logits one pass may hold (rows x tokens x vocab, at most): 64 rows of 16 tokens over a
# 32k vocabulary; fewer rows over a larger one, so memory stays bounded whatever the model.
LOGIT_ELEMENTS = 64 * 16 * 32_768


def text_logprobs(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[tuple[str, str]]
) -> ContinuationScores:
    """Each `(prompt, continuation)`, tokenized together as the model reads the text."""
    ids = [tokenizer(prompt + continuation)["input_ids"] for prompt, continuation in rows]
    starts = [len(tokenizer(prompt)["input_ids"]) for prompt, _ in rows]
    return token_logprobs(model, ids, starts, pad_token_id(tokenizer))


@torch.no_grad()
def token_logprobs(model: nn.Module, rows: list[list[int]], starts: list[int], pad_id: int) -> ContinuationScores:
    """Each row of token ids scored from `starts[i]` on, in right-padded float32 passes of at most
    `LOGIT_ELEMENTS` logits."""
    if not rows:
        return ContinuationScores(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool))
    layout = find_layout(model)
    per_pass = max(1, LOGIT_ELEMENTS // (max(map(len, rows)) * layout.unembed.weight.shape[0]))
    parts = [
        _scored(model, layout, rows[i : i + per_pass], starts[i : i + per_pass], pad_id)
        for i in range(0, len(rows), per_pass)
    ]
    return ContinuationScores(
        torch.cat([part.logprob for part in parts]),
        torch.cat([part.tokens for part in parts]),
        torch.cat([part.greedy for part in parts]),
    )


def _scored(model: nn.Module, layout, rows: list[list[int]], starts: list[int], pad_id: int) -> ContinuationScores:
    device = next(model.parameters()).device
    ids, mask = padded(rows, pad_id)
    hidden = head_inputs(model, layout, input_ids=ids.to(device), attention_mask=mask.to(device))[:, :-1]
    scored = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=device)  # position t predicts token t + 1
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        scored[i, start - 1 : len(row) - 1] = True
    return _scores(layout, hidden, scored, ids[:, 1:].to(device))


@torch.no_grad()
def prompted_logprobs(
    model: nn.Module,
    prompts: torch.Tensor,
    mask: torch.Tensor,
    past: dict[str, Cache],
    continuations: torch.Tensor,
    scored: torch.Tensor,
) -> ContinuationScores:
    """Each row's `continuations` (rows, new) scored where `scored` is True, after its left-padded
    prompt (`prompts`, `mask`: rows x width) whose tokens before the last are already in `past`
    (`shared_prefix`): only the prompts' last tokens and the continuations are read."""
    device = next(model.parameters()).device
    ids = torch.cat([prompts[:, -1:], continuations], dim=1).to(device)
    whole_mask = torch.cat([mask, torch.ones_like(continuations)], dim=1).to(device)
    positions = padded_positions(whole_mask)[:, -ids.shape[1] :]
    layout = find_layout(model)
    hidden = head_inputs(model, layout, input_ids=ids, attention_mask=whole_mask, position_ids=positions, **past)
    return _scores(layout, hidden[:, :-1], scored.to(device), continuations.to(device))


def _scores(layout, hidden: torch.Tensor, scored: torch.Tensor, targets: torch.Tensor) -> ContinuationScores:
    """Per row, the log-probability of `targets` (rows, n) where `scored`, read from the head's
    inputs `hidden` (rows, n, d) that predict them, and whether each is the argmax."""
    # The head runs at the scored positions only, at most `LOGIT_ELEMENTS` logits at a time: a
    # prompt's logits over the vocabulary cost as much as its continuation's and are never read.
    row, targets = scored.nonzero()[:, 0], targets[scored]
    per_pass = max(1, LOGIT_ELEMENTS // layout.unembed.weight.shape[0])
    none = torch.zeros(0, device=hidden.device)  # what is concatenated when no token is scored
    token_logprob, missed = [none], [none]
    for chunk, chunk_targets in zip(hidden[scored].split(per_pass), targets.split(per_pass), strict=True):
        logits = head_logits(layout, chunk)
        token_logprob.append(logits.gather(-1, chunk_targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1))
        # Greedy decoding yields the continuation iff each of its tokens is the argmax given the ones before.
        missed.append((logits.argmax(dim=-1) != chunk_targets).float())
    per_row = torch.zeros(len(scored), device=hidden.device)
    return ContinuationScores(
        per_row.index_add(0, row, torch.cat(token_logprob)).cpu(),
        scored.sum(dim=1).cpu(),
        (per_row.index_add(0, row, torch.cat(missed)) == 0).cpu(),
    )


def padded(
    rows: list[list[int]], pad_id: int, width: int | None = None, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one padded batch `(ids, attention_mask)`, `width` (default: the longest row's)
    wide, padded on the right (for scoring) or the left (for generation, which continues each row
    from its last column). Padding is masked, so any id serves, and no tokenizer needs a pad token."""
    width = width or max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        columns = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, columns], mask[i, columns] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask
