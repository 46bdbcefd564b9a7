"""The fine-tuning domain's tokens, and the trace test: are the fine-tune's lens tokens the
domain's, beyond what a random direction of the same shape shows?

Relevance is read from the fine-tuning data against the general corpus (`score.relevance`);
the test sums the relevant lens tokens over the reported text positions of a layer and compares
the sum with the null of `score.trace_significance`. `finetrace diff` and the cheap audit of
`finetrace watch` both test this way.
"""

from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerBase

from finetrace.adl.collect import Collected
from finetrace.adl.decode import TokenScore, undertrained_tokens, unreadable_tokens
from finetrace.adl.score import (
    Relevance,
    ScoreConfig,
    Significance,
    TraceSignificance,
    relevance,
    token_counts,
    trace_significance,
)
from finetrace.corpus import Record, record_texts
from finetrace.errors import FinetraceError
from finetrace.models.pair import ModelPair
from finetrace.models.residual import Readout


@dataclass(frozen=True)
class DomainTokens:
    """The fine-tuning domain's tokens, and the tokens token lists may show."""

    relevance: Relevance
    allowed: torch.Tensor  # (vocab,) bool
    unreadable: int  # relevant tokens no list may show (special tokens, fragments)


def read_domain(
    tokenizer: PreTrainedTokenizerBase,
    embedding: torch.Tensor,
    records: list[Record],
    general: list[str],
    score: ScoreConfig,
    norm_quantile: float,
) -> DomainTokens:
    """The domain's tokens from the base's input `embedding` (vocab, d), counted turn by turn: a
    chat answer starts a text, so its first word is tokenized as the model writes it."""
    data = token_counts(tokenizer, (text for record in records for text in record_texts(record)))
    domain = relevance(data, token_counts(tokenizer, general), embedding.shape[0], score)
    allowed = readable_tokens(tokenizer, embedding, norm_quantile, domain.relevant)
    return DomainTokens(domain, allowed, int((domain.relevant & ~allowed).sum()))


def readable_tokens(
    tokenizer: PreTrainedTokenizerBase, embedding: torch.Tensor, norm_quantile: float, relevant: torch.Tensor | None
) -> torch.Tensor:
    """(vocab,) tokens that may appear in token lists: readable, and learned by the base (its
    embedding norm above `norm_quantile`), unless the fine-tuning data uses them often
    (`relevant`): a fine-tune may have taught exactly those."""
    undertrained = undertrained_tokens(embedding, norm_quantile)
    if relevant is not None:
        undertrained &= ~relevant
    return ~(unreadable_tokens(tokenizer, embedding.shape[0]) | undertrained)


def base_embedding(pair: ModelPair) -> torch.Tensor:
    """The base's input embedding (vocab, d), which decides which tokens it learned."""
    with pair.use("base") as (model, _):
        return model.get_input_embeddings().weight.detach()


def mark_relevant(tokens: list[TokenScore], domain: DomainTokens) -> list[TokenScore]:
    """Lens tokens with their enrichment in the fine-tuning data and whether they are the domain's."""
    return [
        replace(
            t,
            enrichment=domain.relevance.log_odds[t.token_id].item(),
            relevant=bool(domain.relevance.relevant[t.token_id]),
        )
        for t in tokens
    ]


def check_reported(reported: int, collected: int) -> None:
    """The text positions decoded and tested are among those collected."""
    if reported < 1:
        raise FinetraceError(f"--report {reported}: expected at least 1 text position")
    if reported > collected:
        raise FinetraceError(
            f"--report {reported}: at most --positions ({collected}) text positions are collected; "
            f"lower --report or raise --positions"
        )


def text_positions(collected: Collected, reported: int) -> list[int]:
    """Indices of the first `reported` text positions that are not the attention sink: text
    positions 0.. after a BOS, 1.. where the tokenizer adds none and the first text token is the
    sink (its difference is the sink's, read as function words whatever the fine-tune)."""
    labels = collected.position_labels
    read = [i for i, label in enumerate(labels) if label != "BOS" and i not in collected.sink_positions]
    return read[:reported]


def layer_significance(
    readout: Readout,
    collected: Collected,
    layer_index: int,
    positions: list[int],
    domain: DomainTokens,
    score: ScoreConfig,
    seed: int = 0,
) -> TraceSignificance:
    """The significance of the mean differences at `positions` of one layer, through `readout`."""
    variance = collected.delta.variance[layer_index, positions].mean(0)  # one null draw serves every position
    return trace_significance(
        readout,
        collected.mean_delta[layer_index, positions].float().to(readout.device),
        collected.base.mean[layer_index, positions],
        variance,
        domain.allowed,
        domain.relevance.relevant,
        score,
        seed,
    )


def trace_test(
    readout: Readout, collected: Collected, domain: DomainTokens, reported: int, score: ScoreConfig, seed: int = 0
) -> Significance:
    """The headline test: the fine-tune's relevant lens tokens (through `readout`, its head) over
    the first `reported` text positions of the first layer, against the null."""
    positions = text_positions(collected, reported)
    return layer_significance(readout, collected, 0, positions, domain, score, seed).total


def pair_trace_test(
    pair: ModelPair, collected: Collected, domain: DomainTokens, reported: int, score: ScoreConfig, seed: int = 0
) -> Significance:
    """`trace_test` through the head of the pair's fine-tune (loaded for it, if it is not)."""
    with pair.use("finetuned") as (_, layout):
        return trace_test(layout, collected, domain, reported, score, seed)
