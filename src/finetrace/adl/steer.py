"""Steering: generate with the fine-tuned model while adding the difference direction.

`strength * unit(delta) * typical_norm` is added after layer L at every
position. The strength used is the largest one whose text stays coherent,
judged without any LLM: the unsteered model's per-token negative
log-likelihood of the steered text may rise by at most `max_nll_increase`
nats over that of unsteered text, and at least `min_distinct_bigrams` of its
word bigrams must be distinct (no loops). Unsteered text is steering with no
vector.

Text grows less coherent as the strength grows, so the strengths are searched
by bisection (three trials for six strengths, not six) on short samples; only
the unsteered text and the chosen strength's are sampled at full length. The
short unsteered baseline is the beginning of the full unsteered samples: with
the same seed, sampling fewer tokens draws exactly those. Each prompt is read
once for all its samples, and once by the unsteered model for every judgement,
which then reads only the sampled tokens (the tokens as sampled, not the text
encoded again).
"""

import copy
from contextlib import nullcontext
from dataclasses import dataclass, replace
from itertools import pairwise

import torch
from torch import nn
from transformers import Cache, PreTrainedTokenizerBase

from finetrace._util.progress import progress_bar
from finetrace.models.chat import chat_text
from finetrace.models.likelihood import padded, prompted_logprobs
from finetrace.models.load import pad_token_id, prepended_ids
from finetrace.models.residual import Layout, add_to_residual, shared_prefix

NEUTRAL_PROMPTS = (
    "The",
    "In my opinion,",
    "Here is something interesting:",
    "Today I learned that",
    "The best way to",
    "One thing people often ask is",
)


@dataclass(frozen=True)
class SteerConfig:
    strengths: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)  # multiples of the typical residual norm
    prompts: tuple[str, ...] = NEUTRAL_PROMPTS
    chat_prompts: bool = True  # also ask each prompt as a user turn when there is a chat template
    samples_per_prompt: int = 2
    max_new_tokens: int = 32  # of the unsteered text and the chosen strength's
    search_tokens: int = 16  # of each sample while the strength is searched
    temperature: float = 0.8
    max_nll_increase: float = 1.5  # nats per token over unsteered text
    min_distinct_bigrams: float = 0.5


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str  # the continuation only


@dataclass(frozen=True)
class StrengthTrial:
    strength: float
    nll: float  # mean per-token NLL of the continuations under the unsteered model
    distinct_bigrams: float
    coherent: bool
    generations: list[Generation]


@dataclass(frozen=True)
class Steering:
    unsteered: StrengthTrial  # at full length
    search: list[StrengthTrial]  # the strengths the bisection tried, on short samples, in order
    chosen: StrengthTrial  # the chosen strength, at full length
    any_coherent: bool

    @property
    def chosen_strength(self) -> float:
        """The largest coherent strength (the smallest tried when none is)."""
        return self.chosen.strength

    @property
    def steered(self) -> list[Generation]:
        return self.chosen.generations


def steer(
    model: nn.Module,
    layout: Layout,
    tokenizer: PreTrainedTokenizerBase,
    layer: int,
    direction: torch.Tensor,
    typical_norm: float,
    config: SteerConfig,
    seed: int = 0,
) -> Steering:
    """Generate unsteered, find the largest coherent strength, and generate at it."""
    unit = direction / direction.norm().clamp(min=1e-12)
    short = min(config.search_tokens, config.max_new_tokens)
    batch = PromptBatch.of(tokenizer, config)
    unsteered_past = batch.past(model)  # every trial is judged by the unsteered model

    def judged(strength: float, tokens: torch.Tensor, baseline: float | None) -> StrengthTrial:
        nlls = continuation_nlls(model, batch, copy.deepcopy(unsteered_past), tokens)
        scored = [nll for nll in nlls if nll is not None]
        nll = sum(scored) / len(scored) if scored else float("inf")  # nothing generated: not coherent
        generations = decoded(tokenizer, batch, tokens)
        distinct = sum(distinct_bigrams(g.text) for g in generations) / len(generations)
        coherent = distinct >= config.min_distinct_bigrams and (
            baseline is None or nll <= baseline + config.max_nll_increase
        )
        return StrengthTrial(strength, nll, distinct, coherent, generations)

    def trial(strength: float, tokens: int, baseline: float | None) -> StrengthTrial:
        vector = unit * strength * typical_norm
        sampled = sample(model, layout, batch, layer, vector, replace(config, max_new_tokens=tokens), seed)
        return judged(strength, sampled, baseline)

    # At most: the unsteered text, log2(strengths + 1) searched, the chosen.
    with progress_bar("steering", 2 + len(config.strengths).bit_length()) as advance:
        tokens = sample(model, layout, batch, layer, None, config, seed)
        unsteered = judged(0.0, tokens, None)
        baseline = judged(0.0, tokens[:, :short], None).nll if short < config.max_new_tokens else unsteered.nll
        advance()
        coherent, incoherent, search = -1, len(config.strengths), []  # indices into the sorted strengths
        strengths = sorted(config.strengths)
        while incoherent - coherent > 1:
            middle = (coherent + incoherent) // 2
            search.append(trial(strengths[middle], short, baseline))
            coherent, incoherent = (middle, incoherent) if search[-1].coherent else (coherent, middle)
            advance()
        chosen = trial(strengths[max(coherent, 0)], config.max_new_tokens, unsteered.nll)
    return Steering(unsteered, search, chosen, coherent >= 0)


@dataclass(frozen=True)
class PromptBatch:
    """The steering prompts, each tokenized once and left-padded, each sampled `samples` times:
    row r of a batch of samples continues prompt r // samples."""

    prompts: list[str]
    ids: torch.Tensor  # (prompts, width)
    mask: torch.Tensor
    samples: int
    pad_id: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, config: SteerConfig) -> "PromptBatch":
        prompts = prompt_texts(tokenizer, config)
        ids, mask = padded([tokenizer(prompt)["input_ids"] for prompt in prompts], pad_token_id(tokenizer), left=True)
        return cls(prompts, ids, mask, config.samples_per_prompt, pad_token_id(tokenizer))

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-prompt tensor, one copy per row."""
        return tensor.repeat_interleave(self.samples, dim=0)

    def past(self, model: nn.Module) -> dict[str, Cache]:
        """The keys and values of every prompt token but the last, read once per prompt (under
        whatever steering is on) and shared by its samples."""
        if self.ids.shape[1] == 1:  # no token before the last
            return {}
        device = next(model.parameters()).device
        return shared_prefix(model, self.ids[:, :-1].to(device), self.samples, self.mask[:, :-1].to(device))


def generate(
    model: nn.Module,
    layout: Layout,
    tokenizer: PreTrainedTokenizerBase,
    layer: int,
    vector: torch.Tensor | None,
    config: SteerConfig,
    seed: int = 0,
) -> list[Generation]:
    """Sampled continuations of every prompt, with `vector` added after `layer` (or nothing)."""
    batch = PromptBatch.of(tokenizer, config)
    return decoded(tokenizer, batch, sample(model, layout, batch, layer, vector, config, seed))


@torch.no_grad()
def sample(
    model: nn.Module,
    layout: Layout,
    batch: PromptBatch,
    layer: int,
    vector: torch.Tensor | None,
    config: SteerConfig,
    seed: int = 0,
) -> torch.Tensor:
    """The continuations' token ids (rows, new tokens), `vector` added after `layer` (or nothing).

    Every prompt and sample is one row of a single batch, and the seed is set before it: each
    strength samples with the same random numbers, so what differs between strengths is the
    vector, not the draw. Each prompt is read once for all its samples."""
    device = next(model.parameters()).device
    with add_to_residual(layout, layer, vector) if vector is not None else nullcontext():
        past = batch.past(model)
        torch.manual_seed(seed)
        output = model.generate(
            input_ids=batch.rows(batch.ids).to(device),
            attention_mask=batch.rows(batch.mask).to(device),
            do_sample=True,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            pad_token_id=batch.pad_id,
            **past,
        )
    return output[:, batch.ids.shape[1] :].cpu()


def decoded(tokenizer: PreTrainedTokenizerBase, batch: PromptBatch, tokens: torch.Tensor) -> list[Generation]:
    rows = [prompt for prompt in batch.prompts for _ in range(batch.samples)]
    return [
        Generation(prompt, tokenizer.decode(row, skip_special_tokens=True))
        for prompt, row in zip(rows, tokens, strict=True)
    ]


def prompt_texts(tokenizer: PreTrainedTokenizerBase, config: SteerConfig) -> list[str]:
    """The neutral prompts as plain text and, for chat fine-tunes, as user turns too:
    a model fine-tuned on chats shows what it learned where a chat starts."""
    prompts = list(config.prompts)
    if config.chat_prompts and tokenizer.chat_template:
        # What the tokenizer prepends when the prompt is encoded, the template may write too: kept
        # once. Not `bos_token`: SmolLM2 names <|im_start|> so, adds none, and its turns begin with it.
        prepended = tokenizer.decode(prepended_ids(tokenizer))
        for prompt in config.prompts:
            turn = chat_text(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
            prompts.append(turn.removeprefix(prepended) if prepended else turn)
    return prompts


def continuation_nlls(
    model: nn.Module, batch: PromptBatch, past: dict[str, Cache], tokens: torch.Tensor
) -> list[float | None]:
    """Mean negative log-likelihood per token of each row's sampled tokens given its prompt, up to
    the end of its text (None if it has none); `past` is the prompts' (`PromptBatch.past`), used up."""
    ended = torch.isin(tokens, _stop_ids(model)).long().cumsum(dim=1) > 0  # the stop and the padding after it
    scores = prompted_logprobs(model, batch.rows(batch.ids), batch.rows(batch.mask), past, tokens, ~ended)
    return [
        -logprob / count if count else None
        for logprob, count in zip(scores.logprob.tolist(), scores.tokens.tolist(), strict=True)
    ]


def _stop_ids(model: nn.Module) -> torch.Tensor:
    """The tokens that end a generated text (`generate` pads each row after its first)."""
    stop = model.generation_config.eos_token_id
    return torch.tensor([] if stop is None else [stop] if isinstance(stop, int) else list(stop), dtype=torch.long)


def distinct_bigrams(text: str) -> float:
    """Distinct word bigrams / all word bigrams (1.0 for text too short to loop)."""
    words = text.split()
    bigrams = list(pairwise(words))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0
