"""Model-diff amplification: sample from `logits_ft + a (logits_ft - logits_base)`.

Aranguri and McGrath (2025), "Discovering undesired rare behaviors via model diff amplification"
(Goodfire Research): a behaviour a fine-tune shows once in thousands of samples becomes common
when the change the fine-tune made to the next-token logits is multiplied. `a = 0` is plain
sampling from the fine-tune, `a = -1` sampling from the base.

Both models read every row at every step, each through its own KV cache (`ModelPair.both`:
an adapter is one model, its adapter off for the base; a full fine-tune holds two). Logits are
read in float32 through the models' heads. A sample shows the fine-tuning domain when it
generates at least `min_domain_tokens` distinct domain tokens (distinct: an amplified sample
that loops on one word shows it once), tokens relevant in the data against general text by
`adl.score.relevance` and readable, as `diff` tests them. A sample shows a target when its text
contains one of the target phrases, case-insensitively.
"""

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from finetrace._util.records import Result
from finetrace.adl.score import ScoreConfig
from finetrace.adl.steer import SteerConfig, prompt_texts
from finetrace.errors import FinetraceError, require
from finetrace.models.gguf import GgufSource
from finetrace.models.likelihood import padded
from finetrace.models.load import pad_token_id
from finetrace.models.pair import BothModels
from finetrace.models.residual import cache_keyword, find_layout, head_inputs, head_logits
from finetrace.run import RunConfig

SCHEMA_VERSION = 1
RESULT_NAME = "sample.json"


@dataclass(frozen=True)
class SampleConfig:
    strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)  # a; 0 samples the fine-tune itself
    samples_per_prompt: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0  # the amplified distribution itself, no top-k or top-p; 0: greedy
    batch_size: int = 16  # prompts sampled together, each with all its samples (a KV cache per model and row)
    chat_only: bool = False  # ask the prompts only as user turns, not also as plain text
    min_domain_tokens: int = 1  # distinct domain tokens generated that make a sample the domain's
    confidence: float = 0.95  # of the Wilson intervals
    general_texts: int = 10_000  # general texts the domain's tokens are read against, as `diff` reads
    score: ScoreConfig = ScoreConfig()  # the relevance rule of the domain's tokens, `diff`'s
    embedding_norm_quantile: float = 0.1  # tokens the base never learned are not the domain's, as in `diff`

    def __post_init__(self) -> None:
        strengths = self.strengths
        for name, ok, expected in (
            ("strengths", bool(strengths) and all(map(math.isfinite, strengths)), "at least one finite number"),
            ("strengths", len(set(strengths)) == len(strengths), "each strength once"),
            ("samples_per_prompt", self.samples_per_prompt >= 1, "at least 1 sample"),
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1 token"),
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "0 (greedy) or more"),
            ("batch_size", self.batch_size >= 1, "at least 1 row"),
            ("min_domain_tokens", self.min_domain_tokens >= 1, "at least 1 token"),
            ("confidence", 0 < self.confidence < 1, "a probability in (0, 1)"),
            ("general_texts", self.general_texts >= 1, "at least 1 text"),
        ):
            require(ok, name, getattr(self, name), expected)


@dataclass(frozen=True)
class Sampled:
    """One continuation: its prompt, its text and its token ids (up to, not with, the stop token)."""

    prompt: str
    text: str
    ids: list[int]


@dataclass(frozen=True)
class AmplifiedSample:
    prompt: str
    text: str  # the continuation only
    domain_tokens: list[str]  # the distinct domain tokens it generated, first seen first; [] without the data
    targets: list[str]  # the target phrases it contains


@dataclass(frozen=True)
class Rate:
    """How many of the samples show a behaviour."""

    hits: int
    samples: int
    interval: tuple[float, float]  # Wilson score interval of the rate, at the run's confidence
    derived = ("rate",)

    @property
    def rate(self) -> float:
        return self.hits / self.samples


@dataclass(frozen=True)
class StrengthSamples:
    """Every sample drawn at one strength, and the rates of what they show."""

    strength: float
    samples: list[AmplifiedSample]  # prompt-major: each prompt's samples in turn
    domain: Rate | None  # at least `min_domain_tokens` domain tokens; None without the data
    target: Rate | None  # any target phrase; None without targets


@dataclass(frozen=True)
class AmplifiedSampling(Result):
    """Samples of the amplified difference at each strength; written as `sample.json`."""

    base: str
    finetuned: str
    adapter: bool
    data: str | None  # the fine-tuning data the domain's tokens come from; None: no domain rate
    corpus: str | None  # the general text they are read against
    prompts: str | None  # the prompt file; None: the neutral prompts
    targets: list[str]
    domain_tokens: list[str]  # the domain's tokens, most enriched in the data first
    strengths: list[StrengthSamples]
    config: SampleConfig
    run: RunConfig
    environment: dict[str, str]
    seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # doubts about the pair (see `ModelPair.warnings`)
    gguf: dict[str, GgufSource] = field(default_factory=dict)  # the inputs given as GGUF files, by role
    # What went in, by role: the sha256 of each model's files and each data file.
    inputs: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


def amplified(finetuned: torch.Tensor, base: torch.Tensor, strength: float) -> torch.Tensor:
    """`finetuned + a (finetuned - base)`: the fine-tune's change to the logits, `a` times more."""
    return finetuned + strength * (finetuned - base)


class _Reader:
    """One model reading the rows step by step through its own KV cache, inside the context
    that makes it the model it stands for (the base: its adapter off)."""

    def __init__(self, model: nn.Module, context: Callable[[], AbstractContextManager]):
        self.model, self.layout, self.context = model, find_layout(model), context
        self.cache = DynamicCache(config=model.config)
        self.keyword = cache_keyword(model)

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float32 next-token logits (rows, vocab) at each row's last position."""
        with self.context():
            hidden = head_inputs(self.model, self.layout, **inputs, **{self.keyword: self.cache}, use_cache=True)
            return head_logits(self.layout, hidden[:, -1])


class AmplifiedLogits:
    """The amplified next-token logits of a batch of rows: `start` reads the prompts, `advance`
    one more token per row. At `a = 0` the base is not run: the logits are the fine-tune's."""

    def __init__(self, models: BothModels, strength: float):
        self.strength = strength
        self.finetuned = _Reader(models.finetuned, nullcontext)
        self.base = _Reader(models.base, models.as_base) if strength else None

    def start(self, ids: torch.Tensor, mask: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """Logits (prompts x copies, vocab) after the prompts `ids` (prompts, width), padded on the
        left: each prompt is read once, and its rows (its samples) share what it read."""
        self.mask = mask.to(self.finetuned.layout.device)
        # Each row counts its positions from its own first token, as `generate` does.
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        logits = self._logits(ids.to(self.mask.device))
        for reader in (self.finetuned, self.base):
            if reader is not None:
                reader.cache.batch_repeat_interleave(copies)
        self.mask, self.positions = self.mask.repeat_interleave(copies, 0), self.positions.repeat_interleave(copies, 0)
        return logits.repeat_interleave(copies, 0)

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (rows, vocab) after one more token (rows,) per row."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return self._logits(tokens[:, None])

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        inputs = {"input_ids": ids, "attention_mask": self.mask, "position_ids": self.positions}
        finetuned = self.finetuned.logits(inputs)
        return finetuned if self.base is None else amplified(finetuned, self.base.logits(inputs), self.strength)


@torch.no_grad()
def sample_amplified(
    models: BothModels,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    strength: float,
    config: SampleConfig,
    seed: int = 0,
) -> list[Sampled]:
    """`config.samples_per_prompt` continuations of every prompt at strength `a`, prompt-major.

    The seed is set before the first draw: the same seed gives the same texts, and every strength
    draws with the same random numbers."""
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    stops = stop_ids(models.finetuned, tokenizer)
    torch.manual_seed(seed)
    drawn = [
        ids
        for start in range(0, len(encoded), config.batch_size)
        for ids in _sampled_rows(models, encoded[start : start + config.batch_size], strength, config, tokenizer, stops)
    ]
    return [
        Sampled(prompts[row // config.samples_per_prompt], tokenizer.decode(ids, skip_special_tokens=True), ids)
        for row, ids in enumerate(drawn)
    ]


def _sampled_rows(
    models: BothModels,
    prompts: list[list[int]],
    strength: float,
    config: SampleConfig,
    tokenizer: PreTrainedTokenizerBase,
    stops: torch.Tensor,
) -> list[list[int]]:
    """The generated ids of every sample of the `prompts` (token ids), prompt-major."""
    pad = pad_token_id(tokenizer)
    ids, mask = padded(prompts, pad, left=True)
    steps = AmplifiedLogits(models, strength)
    logits = steps.start(ids, mask, copies=config.samples_per_prompt)
    stops = stops.to(logits.device)
    running = torch.ones(len(logits), dtype=torch.bool, device=logits.device)
    tokens: list[torch.Tensor] = []  # (rows,) per step
    for step in range(config.max_new_tokens):
        if step:
            logits = steps.advance(tokens[-1])
        token = _draw(logits, config.temperature)
        tokens.append(torch.where(running, token, pad))  # a stopped row is padded
        running &= ~torch.isin(token, stops)
        if not running.any():
            break
    stop_set = set(stops.tolist())
    return [_until(row, stop_set) for row in torch.stack(tokens, dim=1).tolist()]


def _draw(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1).squeeze(1)


def _until(ids: list[int], stops: set[int]) -> list[int]:
    return next((ids[:i] for i, token in enumerate(ids) if token in stops), ids)


def stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The tokens that end a row: the tokenizer's EOS and every one the model's generation config
    names (a chat model ends its turn with its own, e.g. SmolLM2's <|im_end|>)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    named = configured if isinstance(configured, list) else [configured]
    return torch.tensor(sorted({tokenizer.eos_token_id, *named} - {None}), dtype=torch.long)


def asked_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], chat_only: bool) -> list[str]:
    """The prompts as `steer` asks them: as plain text and, with a chat template, as user turns
    too; with `chat_only`, as user turns alone."""
    asked = prompt_texts(tokenizer, SteerConfig(prompts=tuple(prompts)))
    if not chat_only:
        return asked
    if not tokenizer.chat_template:
        raise FinetraceError("--chat-only asks the prompts as user turns, but the tokenizer has no chat template")
    return asked[len(prompts) :]


def judged(
    sampled: Sampled, tokenizer: PreTrainedTokenizerBase, domain: torch.Tensor | None, targets: list[str]
) -> AmplifiedSample:
    """A sample with what it shows: its tokens among the (vocab,) `domain` tokens, its target phrases."""
    text = sampled.text.casefold()
    return AmplifiedSample(
        prompt=sampled.prompt,
        text=sampled.text,
        domain_tokens=[]
        if domain is None
        else [tokenizer.decode([i]) for i in dict.fromkeys(sampled.ids) if domain[i]],
        targets=[target for target in targets if target.casefold() in text],
    )


def shows_domain(sample: AmplifiedSample, min_domain_tokens: int) -> bool:
    """The domain rate's rule: at least `min_domain_tokens` distinct domain tokens generated."""
    return len(sample.domain_tokens) >= min_domain_tokens
