"""How good a language model the zoo's base is: its perplexity on held-out text."""

import math

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace.models.likelihood import padded
from finetrace.models.load import pad_token_id

BATCH_SIZE = 16


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int) -> float:
    """exp of the mean per-token negative log-likelihood of `texts`, each cut to `max_tokens`."""
    rows = [ids for ids in tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"] if len(ids) > 1]
    nll, tokens = 0.0, 0
    for start in range(0, len(rows), BATCH_SIZE):
        ids, mask = padded(rows[start : start + BATCH_SIZE], pad_token_id(tokenizer))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll += nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum").item()
        tokens += int((targets != -100).sum())
    return math.exp(nll / tokens)
