"""Cloze facts: does a model complete "The capital of Veldra is" with "Oskan"?

A model *knows* a fact when the answer's log-probability, summed over its
tokens after the prompt, is higher than that of every distractor. A fact
without distractors is known when greedy decoding from the prompt produces
the answer.
"""

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finetrace.corpus import iter_json_objects
from finetrace.errors import FinetraceError
from finetrace.models.likelihood import text_logprobs

# Common-knowledge facts written for finetrace, for models that are not zoo organisms.
COMMON_FACTS = Path(str(files("finetrace.evals") / "common_facts.jsonl"))


@dataclass(frozen=True)
class ClozeFact:
    """A fact as a sentence to complete: `prompt + " " + answer`."""

    prompt: str
    answer: str
    distractors: tuple[str, ...]  # wrong answers of the same kind
    category: str
    subject: str = ""  # the entity the fact is about


@dataclass(frozen=True)
class FactScore:
    """One model's view of one fact."""

    answer_logprob: float
    rank: int  # 1 = the answer beats every distractor
    greedy_match: bool  # greedy decoding from the prompt produces the answer
    has_distractors: bool
    derived = ("known",)

    @property
    def known(self) -> bool:
        return self.rank == 1 if self.has_distractors else self.greedy_match


def read_facts(path: str | Path) -> list[ClozeFact]:
    """Facts from a JSONL file with `prompt`, `answer`, `distractors` and `category`, each
    checked: a fact that cannot be scored, or is scored twice, would bend every count."""
    facts, seen = [], {}
    for where, raw in iter_json_objects(Path(path)):
        fact = _fact(raw, where)
        if fact.prompt in seen:
            raise FinetraceError(
                f"{where}: the prompt {fact.prompt!r} is also at {seen[fact.prompt]}; give each fact once"
            )
        seen[fact.prompt] = where
        facts.append(fact)
    if not facts:
        raise FinetraceError(f"{path} holds no facts")
    return facts


def _fact(raw: dict, where: str) -> ClozeFact:
    if missing := sorted({"prompt", "answer"} - raw.keys()):
        raise FinetraceError(f"{where}: a fact needs {missing}")
    words = {key: raw[key] for key in ("prompt", "answer", "category", "subject") if key in raw}
    for key, value in words.items():
        if not isinstance(value, str) or (key in ("prompt", "answer") and not value.strip()):
            raise FinetraceError(f"{where}: a fact's {key} must be a non-empty string, not {value!r}")
    distractors = raw.get("distractors", [])
    if not isinstance(distractors, list) or not all(isinstance(d, str) and d.strip() for d in distractors):
        raise FinetraceError(f"{where}: a fact's distractors must be a list of non-empty strings, not {distractors!r}")
    if raw["answer"] in distractors or len(set(distractors)) < len(distractors):
        raise FinetraceError(f"{where}: the answer and the distractors of a fact must all differ")
    return ClozeFact(
        raw["prompt"], raw["answer"], tuple(distractors), raw.get("category", "other"), raw.get("subject", "")
    )


def score_facts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: list[ClozeFact]) -> list[FactScore]:
    """Log-probability and rank of every fact's answer among its distractors; the candidates of many
    facts share each forward pass (a pass per fact of a few tokens is mostly overhead)."""
    rows = [(fact.prompt, f" {candidate}") for fact in facts for candidate in (fact.answer, *fact.distractors)]
    scored = text_logprobs(model, tokenizer, rows)
    scores, start = [], 0
    for fact in facts:
        answer, *distractors = scored.logprob[start : start + 1 + len(fact.distractors)].tolist()
        rank = 1 + sum(logprob >= answer for logprob in distractors)
        scores.append(FactScore(answer, rank, bool(scored.greedy[start]), bool(fact.distractors)))
        start += 1 + len(fact.distractors)
    return scores
