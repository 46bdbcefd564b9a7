"""Overlap between fine-tuning data and the evaluation data finetrace uses.

An evaluation item (a fact probe, a text of the diff corpus) is split into
lower-case word n-grams, n = `NGRAM` or the whole item when it is shorter. An
item is *contained* when every one of its n-grams occurs in the data (for an
item of at most `NGRAM` words: it appears verbatim) and *overlapping* when
some but not all do.
"""

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from finetrace.corpus import iter_texts
from finetrace.evals.facts import read_facts

NGRAM = 8
EXAMPLES = 5
WORD = re.compile(r"\w+")


@dataclass
class Overlap:
    """How much of one evaluation set appears in the data."""

    name: str
    items: int
    contained: int = 0
    overlapping: int = 0
    examples: list[str] = field(default_factory=list)  # contained items first


def evaluation_sets(facts: str | Path | None, corpus: str | Path | None = None,
                    corpus_items: int = 1000) -> dict[str, list[str]]:
    """The evaluation texts finetrace measures a fine-tune on: fact probes as the sentences
    they complete, and the first `corpus_items` texts of the activation and drift corpus."""
    sets = {}
    if facts is not None:
        sets["facts"] = [f"{fact.prompt} {fact.answer}" for fact in read_facts(facts)]
    if corpus is not None:
        sets["corpus"] = list(islice(iter_texts(corpus), corpus_items))
    return sets


def words(text: str) -> list[str]:
    return WORD.findall(text.casefold())


class OverlapIndex:
    """The n-grams of named evaluation sets; `add` data texts, then read `overlaps`."""

    def __init__(self, sets: dict[str, Iterable[str]]):
        self._items: dict[str, list[str]] = {name: list(texts) for name, texts in sets.items()}
        self._grams: dict[str, list[set[int]]] = {}  # set name -> hashed n-grams per item
        # n -> hashed n-gram -> the (set name, item) that hold it
        self._owners: dict[int, dict[int, list[tuple[str, int]]]] = defaultdict(lambda: defaultdict(list))
        for name, texts in self._items.items():
            self._grams[name] = [_ngrams(words(text), min(NGRAM, len(words(text)))) for text in self._items[name]]
            for item, text in enumerate(self._items[name]):
                n = min(NGRAM, len(words(text)))
                for gram in self._grams[name][item]:
                    self._owners[n][gram].append((name, item))
        self._found: dict[tuple[str, int], set[int]] = defaultdict(set)

    def add(self, text: str) -> None:
        tokens = words(text)
        for n, owners in self._owners.items():
            for gram in _ngrams(tokens, n):
                for owner in owners.get(gram, ()):
                    self._found[owner].add(gram)

    def overlaps(self) -> list[Overlap]:
        result = []
        for name, items in self._items.items():
            overlap = Overlap(name, len(items))
            shares = [(len(self._found.get((name, i), ())) / len(grams), i)
                      for i, grams in enumerate(self._grams[name]) if grams]
            overlap.contained = sum(share == 1 for share, _ in shares)
            overlap.overlapping = sum(0 < share < 1 for share, _ in shares)
            overlap.examples = [items[i] for share, i in sorted(shares, reverse=True) if share > 0][:EXAMPLES]
            result.append(overlap)
        return result


def _ngrams(tokens: list[str], n: int) -> set[int]:
    """Hashed n-grams: 64-bit hashes keep large evaluation sets small, and one run shares one salt."""
    return {hash(tuple(tokens[i:i + n])) for i in range(len(tokens) - n + 1)} if n else set()
