"""The cheap audit: the trace, the facts lost and the drift of one checkpoint, on a small budget.

The same measures as `finetrace diff` and `forget`, on a sample small enough to run every few
hundred training steps: the mean activation difference on the first tokens of a few hundred
unrelated texts (Minder et al. 2025, arXiv 2510.13900), tested against the fine-tuning data
with diff's own null and decoded with the logit lens; the facts the base knew, scored again;
and the NLL and KL drift on a few dozen held-out texts. No Patchscope, steering or similarity.

Everything the base contributes is read once, into a `BaseReference`: its residuals on the
trace texts, the domain's tokens, the facts it knows, what its head reads on the drift texts,
and its head. Each checkpoint then costs one forward pass over each budget.
"""

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace.adl.collect import (
    CollectConfig,
    Collected,
    accumulate,
    first_tokens,
    layer_residuals,
    position_labels,
    resolve_layers,
)
from finetrace.adl.decode import DecodeConfig, TokenScore, lens_tokens
from finetrace.adl.domain import (
    DomainTokens,
    check_reported,
    mark_relevant,
    read_domain,
    readable_tokens,
    text_positions,
    trace_test,
)
from finetrace.adl.score import ScoreConfig
from finetrace.corpus import iter_sourced_texts, iter_texts, read_records
from finetrace.errors import FinetraceError
from finetrace.evals.drift import BaseReading, DriftConfig, drift_from, read_base
from finetrace.evals.facts import ClozeFact, read_facts, score_facts
from finetrace.gates import Gate
from finetrace.models.load import prepended_ids
from finetrace.models.residual import Readout, find_layout


@dataclass(frozen=True)
class CheapTrace:
    """The trace's settings in the cheap audit, meaning what they mean in `DiffConfig`: what is
    collected, how the lens reads, and the test (no Patchscope or steering is run)."""

    collect: CollectConfig = CollectConfig(samples=256, positions=5)  # diff reads 10,000; 256 hold the top tokens
    decode: DecodeConfig = DecodeConfig()
    score: ScoreConfig = ScoreConfig(null_samples=200)  # the smallest p-value is 1/201, below the 0.01 gate
    reported_positions: int = 5  # the paper's positions 0-4

    def __post_init__(self) -> None:
        check_reported(self.reported_positions, self.collect.positions)


# The budget: one evaluation of the small zoo's cake fine-tune costs under a tenth of the
# training between two of its six checkpoints (benchmarks/watch_cost.py measures it).
CHEAP_TRACE = CheapTrace()
CHEAP_DRIFT = DriftConfig(samples=64, max_tokens=64, bootstrap=200)
TRACE_METRICS = ("trace_strength", "trace_p")  # tested against the fine-tuning data only


def refuse_untestable(fail_on: Iterable[Gate], data: str | Path | None) -> None:
    """A gate on the trace needs the fine-tuning data: without it, no step could be tested."""
    for gate in fail_on:
        if gate.metric in TRACE_METRICS and data is None:
            raise FinetraceError(f"--fail-on {gate}: the trace is tested against the fine-tuning data; give --data")


@dataclass(frozen=True)
class WatchConfig:
    """What the cheap audit reads; the trace and drift settings mean what they mean in diff and forget."""

    trace: CheapTrace = CHEAP_TRACE
    drift: DriftConfig = CHEAP_DRIFT
    facts: int = 100  # facts the base scores; each checkpoint scores again those the base knew

    def __post_init__(self) -> None:
        if self.facts < 1:
            raise FinetraceError(f"facts {self.facts}: expected at least 1 fact to check")


@dataclass(frozen=True)
class Checkup:
    """What the cheap audit found in one checkpoint."""

    trace_strength: float | None  # domain lens tokens beyond the null (None without the fine-tuning data)
    trace_p: float | None  # the trace test's p-value (None without the fine-tuning data)
    trace_norm: float  # norm of the mean difference at the first text position read, over the typical residual norm
    lens: list[TokenScore]  # top logit-lens tokens of that difference; `relevant` marks the domain's
    lost_facts: int
    known_facts: int  # facts the base knew, among those checked
    nll_change: float  # mean per-token NLL change on held-out text, fine-tuned minus base (nats)
    kl_mean: float  # mean per-token KL(fine-tuned || base) on that text (nats)
    seconds: float
    derived = ("lost_fraction", "metrics")

    @property
    def lost_fraction(self) -> float | None:
        """None (not measured) when the base knew none of the facts."""
        return self.lost_facts / self.known_facts if self.known_facts else None

    @property
    def metrics(self) -> dict[str, float | None]:
        """The numbers `--fail-on` gates test, under the names `finetrace audit` gives them."""
        return {
            "trace_strength": self.trace_strength,
            "trace_p": self.trace_p,
            "lost_facts": self.lost_facts,
            "lost_fraction": self.lost_fraction,
            "nll_change": self.nll_change,
            "kl_mean": self.kl_mean,
        }


@dataclass
class BaseReference:
    """What the base contributes to every cheap audit, read once."""

    tokenizer: PreTrainedTokenizerBase
    layers: list[int]
    labels: list[str]  # "BOS" where the tokenizer prepends one, then "0", "1", ...
    ids: torch.Tensor  # (texts, T) the trace texts' first tokens
    attention: torch.Tensor  # (texts, T)
    residuals: torch.Tensor  # (texts, layers, T, d) float32, on the CPU
    domain: DomainTokens | None  # None without the fine-tuning data
    allowed: torch.Tensor  # (vocab,) tokens a lens list may show
    facts: list[ClozeFact]  # the facts the base knows
    facts_checked: int
    drift: BaseReading
    readout: Readout  # the base's head, for drift
    seconds: float  # spent reading it


def read_reference(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    corpus: str | Path,
    facts: str | Path,
    data: str | Path | None = None,
    config: WatchConfig = WatchConfig(),
    text_field: str = "text",
) -> BaseReference:
    """The base `model`'s side of every cheap audit (read in eval mode; its mode is kept)."""
    with evaluating(model):
        return _read_reference(model, tokenizer, corpus, facts, data, config, text_field)


def _read_reference(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    corpus: str | Path,
    facts: str | Path,
    data: str | Path | None,
    config: WatchConfig,
    text_field: str,
) -> BaseReference:
    start = time.perf_counter()
    layout = find_layout(model)
    collect = config.trace.collect
    texts = list(islice(iter_texts(corpus, text_field), collect.samples))
    if not texts:
        raise FinetraceError(f"corpus {corpus} holds no texts")
    prefix = prepended_ids(tokenizer)
    labels = position_labels(prefix, collect.positions)
    ids, attention = first_tokens(tokenizer, texts, prefix, collect.positions)
    layers = resolve_layers(collect.layers, layout.n_layers)
    embedding = model.get_input_embeddings().weight.detach()
    trace = config.trace
    quantile = trace.decode.embedding_norm_quantile
    records = read_records(data, text_field) if data else None
    domain = read_domain(tokenizer, embedding, records, texts, trace.score, quantile) if records else None
    cloze = read_facts(facts)[: config.facts]
    scores = score_facts(model, tokenizer, cloze)
    drift_texts = islice(iter_sourced_texts(corpus, text_field), config.drift.samples)
    return BaseReference(
        tokenizer=tokenizer,
        layers=layers,
        labels=labels,
        ids=ids,
        attention=attention,
        residuals=layer_residuals(model, layout, layers, ids, attention, collect.batch_size).float(),
        domain=domain,
        allowed=domain.allowed if domain else readable_tokens(tokenizer, embedding, quantile, None),
        facts=[fact for fact, score in zip(cloze, scores, strict=True) if score.known],
        facts_checked=len(cloze),
        drift=read_base(model, tokenizer, drift_texts, config.drift),
        readout=layout.detached(),
        seconds=time.perf_counter() - start,
    )


def cheap_audit(
    model: nn.Module, reference: BaseReference, config: WatchConfig = WatchConfig(), seed: int = 0
) -> Checkup:
    """The trace, lost facts and drift of `model`, a fine-tune of the base (even one in training:
    it is read in eval mode, and left in its own mode)."""
    with evaluating(model):
        return _audit(model, reference, config, seed)


def _audit(model: nn.Module, reference: BaseReference, config: WatchConfig, seed: int) -> Checkup:
    start = time.perf_counter()
    layout = find_layout(model)
    batch_size = config.trace.collect.batch_size
    finetuned = layer_residuals(model, layout, reference.layers, reference.ids, reference.attention, batch_size).float()
    collected = Collected.zeros(reference.layers, reference.labels, finetuned.shape[-1])
    accumulate(collected, reference.residuals, finetuned, reference.attention)
    domain = reference.domain
    reported, score = config.trace.reported_positions, config.trace.score
    significance = trace_test(layout, collected, domain, reported, score, seed) if domain else None
    direction = collected.mean_delta[0, text_positions(collected, 1)[0]].float()  # (d,) the first read
    lens = lens_tokens(
        layout, direction.to(layout.device), reference.allowed, reference.tokenizer, config.trace.decode.top_k
    )
    scores = score_facts(model, reference.tokenizer, reference.facts)
    drift = drift_from(reference.drift, reference.readout, model, layout, reference.tokenizer, config.drift, seed)
    return Checkup(
        trace_strength=significance.strength if significance else None,
        trace_p=significance.p_value if significance else None,
        trace_norm=direction.norm().item() / collected.typical_norm(0),
        lens=mark_relevant(lens, domain) if domain else lens,
        lost_facts=sum(not score.known for score in scores),
        known_facts=len(reference.facts),
        nll_change=drift.likelihood.change,
        kl_mean=drift.kl_mean,
        seconds=round(time.perf_counter() - start, 3),
    )


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode (no dropout) and without gradients, back in its own mode afterwards."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)
