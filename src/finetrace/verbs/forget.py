"""`finetrace forget`: the damage a fine-tune did, as lost facts and drift on general text.

score every fact with both models -> flip matrix (overall, per category) with an
exact McNemar test -> NLL and KL drift on held-out general text -> refusals and
over-refusals on chat prompts (`evals.behaviour`), unless they are skipped.
"""

import math
from itertools import islice
from pathlib import Path

from finetrace._util.fingerprints import environment
from finetrace._util.outputs import check_output_dir, refuse_overlap, write_json
from finetrace._util.progress import progress_bar
from finetrace._util.timing import Stopwatch
from finetrace.corpus import iter_sourced_texts
from finetrace.errors import FinetraceError
from finetrace.evals.behaviour import behaviour_from, read_base_behaviour, read_behaviour_prompts
from finetrace.evals.drift import measure_drift
from finetrace.evals.facts import ClozeFact, FactScore, read_facts, score_facts
from finetrace.evals.flips import FlipMatrix, flip_matrix
from finetrace.evals.records import RESULT_NAME, FactChange, ForgetConfig, ForgetResult
from finetrace.models.load import resolve_device
from finetrace.models.pair import ModelPair, load_pair
from finetrace.run import RunConfig
from finetrace.verbs.inputs import behaviour_for, facts_for, input_digests
from finetrace.zoo.build import zoo_corpus

FACTS_PER_STEP = 50  # facts per progress-bar step


def forget(
    base: str | Path,
    finetuned: str | Path,
    facts: str | Path | None = None,
    corpus: str | Path | None = None,
    out: str | Path | None = None,
    config: ForgetConfig = ForgetConfig(),
    run: RunConfig = RunConfig(),
    pair: ModelPair | None = None,
    behaviour: str | Path | bool = True,
) -> ForgetResult:
    """Which facts the fine-tune lost, and how far it drifted on general text.

    Args:
        base: the base model (a directory or a hub id).
        finetuned: the fine-tuned model, or a PEFT adapter directory for `base`.
        facts: a JSONL of cloze facts (`prompt`, `answer`, optional `distractors`, `category`); by
            default a zoo organism's planted facts, else finetrace's common-knowledge ones.
        corpus: held-out general text for the drift measures; by default a zoo organism's held-out
            text, else none, and the drift is not measured.
        out: where to write `forget.json` (nothing is written when None).
        config: the drift's and the behaviour's settings.
        run: the device, dtype, seed (of the bootstrap) and text field the whole run shares.
        pair: `base` and `finetuned` already loaded (`load_pair`), to share one load between analyses.
        behaviour: a JSONL of chat prompts to refuse or answer, for the refusal and over-refusal
            rates; True: a zoo organism's own prompts, else `BEHAVIOUR_PROMPTS`; False skips them.
    """
    clock = Stopwatch()
    facts, corpus = facts_for(finetuned, facts), corpus if corpus is not None else zoo_corpus(finetuned)
    behaviour = behaviour_for(finetuned, behaviour)
    if out is not None:
        inputs = {"base model": base, "fine-tuned model": finetuned, "facts": facts, "corpus": corpus}
        refuse_overlap(out, inputs | {"behaviour": behaviour})
        check_output_dir(out)  # before the models load, not after minutes of work
    cloze = read_facts(facts)
    prompts = read_behaviour_prompts(behaviour) if behaviour is not None else None
    pair = pair or load_pair(base, finetuned, run.device, run.dtype, run.strict)
    clock.lap("load")
    chunks = [cloze[i : i + FACTS_PER_STEP] for i in range(0, len(cloze), FACTS_PER_STEP)]
    # The base is read first, drift included, then the fine-tune: one load of each.
    scores = {"base": _scored_facts(pair, "base", chunks)}
    clock.lap("facts (base)")
    if prompts is not None:
        base_behaviour = read_base_behaviour(pair, prompts, config.behaviour, run.seed)
        clock.lap("behaviour (base)")
    drift = None
    if corpus is not None:
        texts = islice(iter_sourced_texts(corpus, run.text_field), config.drift.samples)
        drift = measure_drift(pair, texts, config.drift, run.seed)
        likelihood = drift.likelihood
        _require_finite(pair, "base", [likelihood.base_nll], "general-text NLL")
        _require_finite(pair, "finetuned", [likelihood.finetuned_nll, drift.kl_mean], "general-text NLL and KL")
        clock.lap("drift")
    scores["finetuned"] = _scored_facts(pair, "finetuned", chunks)
    for which, scored in scores.items():
        _require_finite(pair, which, [score.answer_logprob for score in scored], "fact log-probabilities")
    changes = [FactChange(*row) for row in zip(cloze, scores["base"], scores["finetuned"], strict=True)]
    clock.lap("facts (fine-tuned)")
    behaviour_result = None
    if prompts is not None:
        behaviour_result = behaviour_from(base_behaviour, pair, str(behaviour), config.behaviour, run.seed)
        clock.lap("behaviour (fine-tuned)")
    result = ForgetResult(
        base=str(base),
        finetuned=str(finetuned),
        facts_source=str(facts),
        flips=_flips(changes),
        by_category={
            name: _flips([c for c in changes if c.fact.category == name])
            for name in sorted({c.fact.category for c in changes})
        },
        facts=changes,
        drift=drift,
        corpus=str(corpus) if corpus is not None else None,
        config=config,
        run=run,
        environment=environment(resolve_device(run.device)),
        seconds=clock.laps,
        warnings=pair.warnings,
        gguf=pair.gguf,
        inputs=input_digests(
            {"base": base, "finetuned": finetuned}, {"facts": facts, "corpus": corpus, "behaviour": behaviour}
        ),
        behaviour=behaviour_result,
    )
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / RESULT_NAME, result.to_dict())
    return result


def _scored_facts(pair: ModelPair, which: str, chunks: list[list[ClozeFact]]) -> list[FactScore]:
    with progress_bar(f"facts: {which} model", len(chunks)) as advance, pair.use(which) as (model, _):
        scored = []
        for chunk in chunks:
            scored += score_facts(model, pair.tokenizer, chunk)
            advance()
        return scored


def _require_finite(pair: ModelPair, which: str, values: list[float], what: str) -> None:
    """NaN never reads as a result: a NaN log-probability ranks first against every distractor."""
    broken = sum(not math.isfinite(value) for value in values)
    if broken:
        name = pair.base_name if which == "base" else pair.finetuned_name
        raise FinetraceError(
            f"the {which} model {name} gives non-finite {what} ({broken} of {len(values)}): "
            f"its weights or activations hold NaN or inf; check the model, or run in float32"
        )


def _flips(changes: list[FactChange]) -> FlipMatrix:
    return flip_matrix([c.base.known for c in changes], [c.finetuned.known for c in changes])
