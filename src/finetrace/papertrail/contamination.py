"""Overlap between fine-tuning data and the evaluation data finetrace uses.

An evaluation item (a fact probe, a text of the diff corpus) is split into
lower-case word n-grams, n = `NGRAM` or the whole item when it is shorter. An
item is *contained* when every one of its n-grams occurs in the data (for an
item of at most `NGRAM` words: it appears verbatim) and *overlapping* when
some but not all do. Data texts arrive as word hashes and are matched in batches.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from finetrace.corpus import iter_texts
from finetrace.evals.facts import read_facts
from finetrace.papertrail.ngrams import ngram_hashes, word_hashes

NGRAM = 8
EXAMPLES = 5
BATCH = 512  # data texts matched together
BATCH_WORDS = 1 << 20  # ... or fewer, when they hold this many words


@dataclass
class Overlap:
    """How much of one evaluation set appears in the data."""

    name: str
    items: int
    contained: int = 0
    overlapping: int = 0
    examples: list[str] = field(default_factory=list)  # the most overlapped items first


def evaluation_sets(
    facts: str | Path | None, corpus: str | Path | None = None, corpus_items: int = 1000, text_field: str = "text"
) -> dict[str, list[str]]:
    """The evaluation texts finetrace measures a fine-tune on: fact probes as the sentences
    they complete, and the first `corpus_items` texts of the activation and drift corpus
    (its records' text in `text_field`)."""
    sets = {}
    if facts is not None:
        sets["facts"] = [f"{fact.prompt} {fact.answer}" for fact in read_facts(facts)]
    if corpus is not None:
        sets["corpus"] = list(islice(iter_texts(corpus, text_field), corpus_items))
    return sets


class OverlapIndex:
    """The n-grams of named evaluation sets; `add` data texts, then read `overlaps`."""

    def __init__(self, sets: dict[str, Iterable[str]]):
        self._items = {name: list(texts) for name, texts in sets.items()}
        self._grams: dict[tuple[str, int], set[int]] = {}  # (set name, item) -> its n-gram hashes
        owners: dict[int, dict[int, list[tuple[str, int]]]] = defaultdict(lambda: defaultdict(list))
        for name, texts in self._items.items():
            for item, text in enumerate(texts):
                hashes = word_hashes(text)
                n = min(NGRAM, len(hashes))
                self._grams[name, item] = set(ngram_hashes(hashes, n).tolist())
                for gram in self._grams[name, item]:
                    owners[n][gram].append((name, item))
        self._owners = {n: dict(grams) for n, grams in owners.items()}  # n -> n-gram hash -> items
        self._keys = {n: np.fromiter(grams, dtype=np.uint64) for n, grams in self._owners.items()}
        self._found: dict[tuple[str, int], set[int]] = defaultdict(set)
        self._pending: list[np.ndarray] = []
        self._pending_words = 0

    def add(self, hashes: np.ndarray) -> None:
        """A data text, as its `word_hashes`."""
        if not self._owners:
            return
        # A long text goes in windows that overlap by NGRAM - 1 words, so every n-gram lies whole
        # in one of them and memory stays bounded whatever the length of a text.
        for start in range(0, max(len(hashes) - NGRAM + 1, 1), BATCH_WORDS):
            self._pending.append(hashes[start : start + BATCH_WORDS + NGRAM - 1])
            self._pending_words += len(self._pending[-1])
            if len(self._pending) >= BATCH or self._pending_words >= BATCH_WORDS:
                self._flush()

    def overlaps(self) -> list[Overlap]:
        self._flush()
        result = []
        for name, items in self._items.items():
            shares = [
                (len(self._found[name, i]) / len(self._grams[name, i]), i)
                for i in range(len(items))
                if self._grams[name, i]
            ]
            examples = [items[i] for share, i in sorted(shares, key=lambda s: -s[0]) if share > 0][:EXAMPLES]
            result.append(
                Overlap(
                    name,
                    len(items),
                    contained=sum(share == 1 for share, _ in shares),
                    overlapping=sum(0 < share < 1 for share, _ in shares),
                    examples=examples,
                )
            )
        return result

    def _flush(self) -> None:
        """Match the pending texts as one array; n-grams that straddle two texts do not count."""
        if not self._pending:
            return
        hashes = np.concatenate(self._pending)
        text_of = np.repeat(np.arange(len(self._pending)), [len(text) for text in self._pending])
        for n, keys in self._keys.items():
            grams = ngram_hashes(hashes, n)
            inside = text_of[: len(grams)] == text_of[n - 1 :]
            for gram in set(grams[inside & np.isin(grams, keys)].tolist()):
                for owner in self._owners[n][gram]:
                    self._found[owner].add(gram)
        self._pending, self._pending_words = [], 0
