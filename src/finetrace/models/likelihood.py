"""How likely a model finds a continuation of a prompt."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace.models.load import pad_token_id
from finetrace.models.residual import final_logits, find_layout


@dataclass(frozen=True)
class ContinuationScores:
    logprob: torch.Tensor  # (n,) summed log-probability of each continuation's tokens
    tokens: torch.Tensor  # (n,) how many tokens each continuation adds after the prompt
    greedy: torch.Tensor  # (n,) bool: greedy decoding from the prompt would produce it


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, continuations: list[str]
) -> ContinuationScores:
    """Score every continuation after the prompt in one right-padded batch, in float32."""
    prompt_length = len(tokenizer(prompt)["input_ids"])
    rows = [tokenizer(prompt + c)["input_ids"] for c in continuations]
    device = next(model.parameters()).device
    ids, mask = padded(rows, pad_token_id(tokenizer))
    logits = final_logits(model, find_layout(model), input_ids=ids.to(device), attention_mask=mask.to(device))
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # (n, width - 1, vocab)
    targets = ids[:, 1:].to(device)
    token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (n, width - 1)
    in_continuation = torch.zeros_like(token_logprobs, dtype=torch.bool)
    for i, row in enumerate(rows):
        in_continuation[i, prompt_length - 1 : len(row) - 1] = True  # position t predicts token t + 1
    # Greedy decoding yields the continuation iff each of its tokens is the argmax given the ones before.
    top_choice = logprobs.argmax(dim=-1) == targets
    return ContinuationScores(
        (token_logprobs * in_continuation).sum(dim=1).cpu(),
        in_continuation.sum(dim=1).cpu(),
        (top_choice | ~in_continuation).all(dim=1).cpu(),
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
