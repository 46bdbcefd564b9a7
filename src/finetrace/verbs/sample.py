"""`finetrace sample`: rare behaviours made common by amplifying the fine-tune's difference.

the domain's tokens from the fine-tuning data (with the base) -> at each strength a, samples
from `ft + a (ft - base)` with both models -> per strength, the share of samples that show the
domain or a target phrase, with Wilson intervals.
"""

from itertools import islice
from pathlib import Path

import torch

from finetrace._util.fingerprints import environment
from finetrace._util.outputs import check_output_dir, refuse_overlap, write_json
from finetrace._util.progress import progress_bar
from finetrace._util.timing import Stopwatch
from finetrace.adl.amplify import (
    RESULT_NAME,
    AmplifiedSample,
    AmplifiedSampling,
    Rate,
    SampleConfig,
    StrengthSamples,
    asked_prompts,
    judged,
    sample_amplified,
    shows_domain,
)
from finetrace.adl.domain import base_embedding, read_domain
from finetrace.adl.steer import NEUTRAL_PROMPTS
from finetrace.corpus import iter_texts, read_records, read_texts
from finetrace.errors import FinetraceError
from finetrace.evals.rates import wilson
from finetrace.models.load import resolve_device
from finetrace.models.pair import ModelPair, load_pair
from finetrace.run import RunConfig
from finetrace.verbs.inputs import corpus_for, data_for, input_digests

PROMPT_FIELD = "prompt"  # of a JSONL prompt file: the behaviour prompts' field, so those files serve as they are


def sample(
    base: str | Path,
    finetuned: str | Path,
    out: str | Path = "finetrace-sample",
    config: SampleConfig = SampleConfig(),
    run: RunConfig = RunConfig(),
    data: str | Path | None = None,
    corpus: str | Path | None = None,
    prompts: str | Path | None = None,
    targets: tuple[str, ...] = (),
    pair: ModelPair | None = None,
) -> AmplifiedSampling:
    """Sample from the fine-tune's amplified difference at each of `config.strengths`.

    Args:
        base: the base model (a directory or a hub id).
        finetuned: the fine-tuned model, or a PEFT adapter directory for `base`.
        out: where to write `sample.json`.
        config: the strengths, samples, and the rule of the domain rate.
        run: the device, dtype, seed (of the draws) and text field the whole run shares.
        data: the fine-tuning data, whose tokens make the domain rate; by default a zoo
            organism's documents, else none and no domain rate.
        corpus: general text the data's tokens are read against; by default a zoo organism's
            held-out text (needed with `data` otherwise).
        prompts: a `.txt` (a prompt a line) or `.jsonl` (a "prompt" field) of prompts; by default
            `steer`'s neutral prompts.
        targets: phrases whose share of samples (case-insensitive, any one) is the target rate.
        pair: `base` and `finetuned` already loaded (`load_pair`), to share one load between analyses.
    """
    data = data_for(finetuned, data)
    corpus = corpus_for(finetuned, corpus) if data is not None else None
    inputs = {"base model": base, "fine-tuned model": finetuned, "data": data, "corpus": corpus, "prompts": prompts}
    refuse_overlap(out, inputs)
    out = check_output_dir(out, "--out")
    if any(not target.strip() for target in targets):
        raise FinetraceError(f"--target {list(targets)}: every target needs some text other than spaces")
    questions = _prompts(prompts)
    records = read_records(data, run.text_field) if data is not None else None  # bad data fails before a load
    out.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch()
    pair = pair or load_pair(base, finetuned, run.device, run.dtype, run.strict)
    clock.lap("load")
    domain, domain_words = None, []  # (vocab,) bool, and those tokens' words
    if records is not None:
        general = list(islice(iter_texts(corpus, run.text_field), config.general_texts))
        tokens = read_domain(
            pair.tokenizer, base_embedding(pair), records, general, config.score, config.embedding_norm_quantile
        )
        domain = tokens.relevance.relevant & tokens.allowed
        domain_words = _ranked_words(pair, tokens.relevance.log_odds, domain)
        clock.lap("domain")
    asked = asked_prompts(pair.tokenizer, questions, config.chat_only)
    strengths = _sampled(pair, asked, domain, list(targets), config, run, clock)
    result = AmplifiedSampling(
        base=str(base),
        finetuned=str(finetuned),
        adapter=pair.adapter,
        data=str(data) if data is not None else None,
        corpus=str(corpus) if corpus is not None else None,
        prompts=str(prompts) if prompts is not None else None,
        targets=list(targets),
        domain_tokens=domain_words,
        strengths=strengths,
        config=config,
        run=run,
        environment=environment(resolve_device(run.device)),
        seconds=clock.laps,
        warnings=pair.warnings,
        gguf=pair.gguf,
        inputs=input_digests(
            {"base": base, "finetuned": finetuned}, {"data": data, "corpus": corpus, "prompts": prompts}
        ),
    )
    write_json(out / RESULT_NAME, result.to_dict())
    return result


def _prompts(path: str | Path | None) -> list[str]:
    if path is None:
        return list(NEUTRAL_PROMPTS)
    prompts = read_texts(path, PROMPT_FIELD)
    if any(not prompt.strip() for prompt in prompts):
        raise FinetraceError(f"--prompts {path}: a prompt is empty; give each prompt some text")
    return prompts


def _sampled(
    pair: ModelPair,
    asked: list[str],
    domain: torch.Tensor | None,
    targets: list[str],
    config: SampleConfig,
    run: RunConfig,
    clock: Stopwatch,
) -> list[StrengthSamples]:
    """The samples and rates of every strength, both models held for all of them."""
    strengths = []
    with pair.both() as models, progress_bar("sampling (strengths)", len(config.strengths)) as advance:
        for strength in config.strengths:
            drawn = sample_amplified(models, pair.tokenizer, asked, strength, config, run.seed)
            samples = [judged(one, pair.tokenizer, domain, targets) for one in drawn]
            strengths.append(_rates(strength, samples, domain is not None, bool(targets), config))
            clock.lap(f"a = {strength:g}")
            advance()
    return strengths


def _rates(
    strength: float, samples: list[AmplifiedSample], domain: bool, targets: bool, config: SampleConfig
) -> StrengthSamples:
    def rate(hits: int) -> Rate:
        return Rate(hits, len(samples), wilson(hits, len(samples), config.confidence))

    in_domain = sum(shows_domain(one, config.min_domain_tokens) for one in samples)
    on_target = sum(bool(one.targets) for one in samples)
    return StrengthSamples(strength, samples, rate(in_domain) if domain else None, rate(on_target) if targets else None)


def _ranked_words(pair: ModelPair, log_odds: torch.Tensor, domain: torch.Tensor) -> list[str]:
    """The words of the `domain` tokens, most enriched in the data first."""
    ids = domain.nonzero().flatten()
    ranked = ids[log_odds[ids].argsort(descending=True)]
    return [pair.tokenizer.decode([i]) for i in ranked.tolist()]
