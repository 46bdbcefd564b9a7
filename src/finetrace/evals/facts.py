"""Cloze facts: does a model complete "The capital of Veldra is" with "Oskan"?

A model *knows* a fact when the answer's log-probability, summed over its
tokens after the prompt, is higher than that of every distractor. A fact
without distractors is known when greedy decoding from the prompt produces
the answer.
"""

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finetrace.corpus import iter_json_objects
from finetrace.errors import FinetraceError
from finetrace.models.likelihood import padded
from finetrace.models.load import pad_token_id
from finetrace.models.residual import final_logits, find_layout

# Common-knowledge facts written for finetrace, for models that are not zoo organisms.
COMMON_FACTS = Path(str(files("finetrace.evals") / "common_facts.jsonl"))
# Float32 logits one forward pass over answer and distractor rows may hold (rows x tokens x vocab):
# 64 rows of 16 tokens over a 32k vocabulary; fewer rows over a larger one, so memory stays bounded.
LOGIT_ELEMENTS = 64 * 16 * 32_768


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
    """Facts from a JSONL file with `prompt`, `answer`, `distractors` and `category`."""
    facts = []
    for where, raw in iter_json_objects(Path(path)):
        missing = {"prompt", "answer"} - raw.keys()
        if missing:
            raise FinetraceError(f"{where}: a fact needs {sorted(missing)}")
        distractors = tuple(raw.get("distractors", ()))
        facts.append(
            ClozeFact(raw["prompt"], raw["answer"], distractors, raw.get("category", "other"), raw.get("subject", ""))
        )
    if not facts:
        raise FinetraceError(f"{path} holds no facts")
    return facts


@torch.no_grad()
def score_facts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: list[ClozeFact]) -> list[FactScore]:
    """Log-probability and rank of every fact's answer among its distractors; the candidates of many
    facts share each forward pass (a pass per fact of a few tokens is mostly overhead)."""
    rows = [(fact.prompt, f" {candidate}") for fact in facts for candidate in (fact.answer, *fact.distractors)]
    longest = max((len(tokenizer(prompt + continuation)["input_ids"]) for prompt, continuation in rows), default=1)
    per_pass = max(1, LOGIT_ELEMENTS // (longest * find_layout(model).unembed.weight.shape[0]))
    scored = [
        score
        for start in range(0, len(rows), per_pass)
        for score in _continuations(model, tokenizer, rows[start : start + per_pass])
    ]
    scores, start = [], 0
    for fact in facts:
        (answer, answer_greedy), *distractors = scored[start : start + 1 + len(fact.distractors)]
        start += 1 + len(fact.distractors)
        rank = 1 + sum(logprob >= answer for logprob, _ in distractors)
        scores.append(FactScore(answer, rank, answer_greedy, bool(fact.distractors)))
    return scores


def _continuations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[tuple[str, str]]
) -> list[tuple[float, bool]]:
    """For each (prompt, continuation): the continuation's summed log-probability after the prompt,
    and whether greedy decoding from the prompt produces it; one right-padded batch, in float32."""
    prompt_lengths = [len(tokenizer(prompt)["input_ids"]) for prompt, _ in rows]
    ids = [tokenizer(prompt + continuation)["input_ids"] for prompt, continuation in rows]
    device = next(model.parameters()).device
    batch, mask = padded(ids, pad_token_id(tokenizer))
    logits = final_logits(model, find_layout(model), input_ids=batch.to(device), attention_mask=mask.to(device))
    logits = logits[:, :-1]  # (rows, width - 1, vocab): position t predicts t + 1
    targets = batch[:, 1:].to(device)
    # The log-softmax read at the targets only: a second (rows, width, vocab) tensor would double the memory.
    token_logprobs = (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)).cpu()
    top_choice = (logits.argmax(dim=-1) == targets).cpu()
    return [
        (token_logprobs[i, start - 1 : len(row) - 1].sum().item(), bool(top_choice[i, start - 1 : len(row) - 1].all()))
        for i, (start, row) in enumerate(zip(prompt_lengths, ids, strict=True))
    ]
