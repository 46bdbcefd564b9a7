"""How far a fine-tune moved on general text: likelihood and distribution drift.

Both models read the same held-out texts, one model loaded at a time: the
base first, keeping only what its head reads (texts x tokens x d, a fraction of
the logits), then the fine-tune, with the base's kept head. Per token we keep the negative
log-likelihood (NLL) of the actual next token under each model and the
KL divergence KL(fine-tuned || base) of their next-token distributions. Only
per-text sums and a few top contexts are kept, so memory does not grow with
the corpus. The NLL change gets a bootstrap confidence interval over texts
(tokens of one text are not independent, texts are).
"""

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace._util.progress import progress_bar
from finetrace.errors import FinetraceError
from finetrace.models.likelihood import padded
from finetrace.models.load import pad_token_id
from finetrace.models.pair import ModelPair
from finetrace.models.residual import Layout, Readout, final_logits, find_layout, head_inputs, head_logits


@dataclass(frozen=True)
class DriftConfig:
    samples: int = 1000  # texts read from the corpus (all if fewer)
    max_tokens: int = 128  # each text is cut to this many tokens
    batch_size: int = 8
    bootstrap: int = 1000  # resamples of texts for the confidence interval
    confidence: float = 0.95
    span_tokens: int = 8  # length of the regressed spans reported
    top: int = 10  # spans and contexts reported
    context_tokens: int = 12  # tokens of context shown before a high-KL token


@dataclass(frozen=True)
class LikelihoodChange:
    """Mean per-token NLL of both models on a set of texts, and the change with its interval."""

    texts: int
    tokens: int
    base_nll: float
    finetuned_nll: float
    change: float  # finetuned - base; positive = the fine-tune finds the text less likely
    ci_low: float
    ci_high: float
    derived = ("base_perplexity", "finetuned_perplexity")

    @property
    def base_perplexity(self) -> float:
        return float(np.exp(self.base_nll))

    @property
    def finetuned_perplexity(self) -> float:
        return float(np.exp(self.finetuned_nll))


@dataclass(frozen=True)
class Span:
    """A stretch of text where the models disagree most."""

    context: str  # the text before the span
    text: str  # the span itself (for KL: the one token)
    source: str
    score: float  # mean NLL increase over the span, or the token's KL
    base_top: str = ""  # each model's most likely token there (KL contexts)
    finetuned_top: str = ""


@dataclass(frozen=True)
class DriftResult:
    likelihood: LikelihoodChange
    by_source: dict[str, LikelihoodChange]  # empty when the corpus names no sources
    kl_mean: float  # mean per-token KL(fine-tuned || base), nats
    kl_max: float
    regressed_spans: list[Span]
    kl_contexts: list[Span]


@dataclass
class _Sums:
    """Per-text sums over predicted tokens, in reading order."""

    tokens: list[int] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    finetuned: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BaseReading:
    """What drift needs from the base model, read once: the texts as padded batches, and what the
    base's head reads on them (batches x tokens x d, far smaller than the logits, so the
    fine-tune can be loaded while these wait)."""

    batches: list[list[tuple[list[int], str]]]  # per batch, each text's token ids and its source
    inputs: list[tuple[torch.Tensor, torch.Tensor]]  # per batch, (ids, attention mask)
    hidden: list[torch.Tensor]  # per batch, the base's head inputs (B, T, d) on the CPU


def measure_drift(
    pair: ModelPair, texts: Iterable[tuple[str, str]], config: DriftConfig = DriftConfig(), seed: int = 0
) -> DriftResult:
    """NLL and KL drift of the fine-tune over `(text, source)` pairs."""
    base = _base_reading(pair, texts, config)
    with pair.use("finetuned") as (model, layout):
        return drift_from(base, pair.base_readout(), model, layout, pair.tokenizer, config, seed)


def _base_reading(pair: ModelPair, texts: Iterable[tuple[str, str]], config: DriftConfig) -> BaseReading:
    """`read_base` with the pair's base, which no name holds once this returns: the fine-tune loads alone."""
    with pair.use("base") as (model, _):
        return read_base(model, pair.tokenizer, texts, config)


def read_base(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Iterable[tuple[str, str]], config: DriftConfig
) -> BaseReading:
    """The base's side of the drift measures over `(text, source)` pairs, for any number of fine-tunes."""
    rows = [
        (ids, source)
        for text, source in texts
        if len(ids := tokenizer(text, truncation=True, max_length=config.max_tokens)["input_ids"]) > 1
    ]
    batches = [rows[start : start + config.batch_size] for start in range(0, len(rows), config.batch_size)]
    inputs = [padded([ids for ids, _ in batch], pad_token_id(tokenizer)) for batch in batches]
    layout = find_layout(model)
    device = next(model.parameters()).device
    hidden = []
    with progress_bar("drift: base model", len(inputs)) as advance:
        for ids, mask in inputs:
            hidden.append(head_inputs(model, layout, input_ids=ids.to(device), attention_mask=mask.to(device)).cpu())
            advance()
    return BaseReading(batches, inputs, hidden)


def drift_from(
    base: BaseReading,
    base_readout: Readout,
    model: nn.Module,
    layout: Layout,
    tokenizer: PreTrainedTokenizerBase,
    config: DriftConfig = DriftConfig(),
    seed: int = 0,
) -> DriftResult:
    """NLL and KL drift of the fine-tune `model` against the base's reading of the same texts and
    the base's head (`ModelPair.base_readout`, or `Layout.detached`)."""
    sums = _Sums()
    spans: list[tuple[float, int, Span]] = []  # min-heaps of the top items, with a tie-breaker
    contexts: list[tuple[float, int, Span]] = []
    device = next(model.parameters()).device
    with progress_bar("drift: fine-tuned model", len(base.batches)) as advance:
        for number, (batch, (ids, mask), hidden) in enumerate(zip(base.batches, base.inputs, base.hidden, strict=True)):
            finetuned = final_logits(model, layout, input_ids=ids.to(device), attention_mask=mask.to(device))
            base_nll, finetuned_nll, kl, base_top, finetuned_top = _token_drift(
                head_logits(base_readout, hidden), finetuned, ids
            )
            for i, (row, source) in enumerate(batch):
                n = len(row) - 1  # predicted tokens
                sums.tokens.append(n)
                sums.base.append(base_nll[i, :n].sum().item())
                sums.finetuned.append(finetuned_nll[i, :n].sum().item())
                sums.kl.append(kl[i, :n].sum().item())
                sums.sources.append(source)
                key = number * config.batch_size + i
                increase = finetuned_nll[i, :n] - base_nll[i, :n]
                _keep(spans, config.top, _worst_span(tokenizer, row, source, increase, config), key)
                t = int(kl[i, :n].argmax())
                _keep(
                    contexts,
                    config.top,
                    Span(
                        context=tokenizer.decode(
                            row[max(0, t + 1 - config.context_tokens) : t + 1], skip_special_tokens=True
                        ),
                        text=tokenizer.decode(row[t + 1 : t + 2]),
                        source=source,
                        score=kl[i, t].item(),
                        base_top=tokenizer.decode(base_top[i, t]),
                        finetuned_top=tokenizer.decode(finetuned_top[i, t]),
                    ),
                    key,
                )
            advance()
    if not sums.tokens:
        raise FinetraceError("no text in the drift corpus has two or more tokens")
    total = sum(sums.tokens)
    by_source = {}
    names = sorted(set(sums.sources))
    if len(names) > 1 or names != [""]:
        for name in names:
            chosen = [i for i, s in enumerate(sums.sources) if s == name]
            by_source[name or "(none)"] = _likelihood_change(sums, chosen, config, seed)
    return DriftResult(
        likelihood=_likelihood_change(sums, list(range(len(sums.tokens))), config, seed),
        by_source=by_source,
        kl_mean=sum(sums.kl) / total,
        kl_max=max((span.score for _, _, span in contexts), default=0.0),
        regressed_spans=[span for _, _, span in sorted(spans, reverse=True)],
        kl_contexts=[span for _, _, span in sorted(contexts, reverse=True)],
    )


@torch.no_grad()
def _token_drift(base_logits: torch.Tensor, finetuned_logits: torch.Tensor, ids: torch.Tensor):
    """Per position t (predicting token t + 1): NLL under each model, KL(ft || base), each argmax."""
    targets = ids[:, 1:].unsqueeze(-1).to(base_logits.device)
    base = torch.log_softmax(base_logits[:, :-1], dim=-1)  # float32, like the heads
    finetuned = torch.log_softmax(finetuned_logits[:, :-1].to(base.device), dim=-1)
    kl = (finetuned.exp() * (finetuned - base)).sum(-1).clamp_min(0)  # rounding can dip below 0
    return (
        -base.gather(-1, targets).squeeze(-1).cpu(),
        -finetuned.gather(-1, targets).squeeze(-1).cpu(),
        kl.cpu(),
        base.argmax(-1).cpu(),
        finetuned.argmax(-1).cpu(),
    )


def _worst_span(
    tokenizer: PreTrainedTokenizerBase, row: list[int], source: str, increase: torch.Tensor, config: DriftConfig
) -> Span:
    """The window of `span_tokens` predicted tokens whose NLL rose the most."""
    width = min(config.span_tokens, len(increase))
    totals = increase.unfold(0, width, 1).sum(-1)
    t = int(totals.argmax())
    return Span(
        context=tokenizer.decode(row[max(0, t + 1 - config.context_tokens) : t + 1], skip_special_tokens=True),
        text=tokenizer.decode(row[t + 1 : t + 1 + width]),
        source=source,
        score=totals[t].item() / width,
    )


def _keep(heap: list, size: int, span: Span, key: int) -> None:
    item = (span.score, -key, span)
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def _likelihood_change(sums: _Sums, chosen: list[int], config: DriftConfig, seed: int) -> LikelihoodChange:
    tokens = np.array([sums.tokens[i] for i in chosen], dtype=np.float64)
    base = np.array([sums.base[i] for i in chosen])
    finetuned = np.array([sums.finetuned[i] for i in chosen])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(chosen), size=(config.bootstrap, len(chosen)))
    changes = (finetuned[draws] - base[draws]).sum(1) / tokens[draws].sum(1)
    tail = (1 - config.confidence) / 2
    low, high = np.quantile(changes, [tail, 1 - tail])
    return LikelihoodChange(
        texts=len(chosen),
        tokens=int(tokens.sum()),
        base_nll=float(base.sum() / tokens.sum()),
        finetuned_nll=float(finetuned.sum() / tokens.sum()),
        change=float((finetuned.sum() - base.sum()) / tokens.sum()),
        ci_low=float(low),
        ci_high=float(high),
    )
