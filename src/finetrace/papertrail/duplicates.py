"""Exact and near-duplicate records, found in one streaming pass.

Exact: the same text after case folding and whitespace collapsing. Near: an
estimated Jaccard similarity of (lower-case) word 5-gram sets at or above a threshold, by
MinHash with locality-sensitive hashing (datasketch). The near-duplicate index
holds at most `index_limit` records, so memory stays bounded on any input;
records past the limit are still compared against it.
"""

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
from datasketch import MinHash, MinHashLSH

from finetrace.papertrail.ngrams import ngram_hashes

SHINGLE_WORDS = 5
EXAMPLES = 5
SHINGLE_CHUNK = 1 << 13  # MinHash hashes a batch into (num_perm, batch) arrays: keep them small
_WORD_RUNS = re.compile(r"\S+(?:\s+\S+){0,4095}")  # up to 4096 words


@dataclass(frozen=True)
class DuplicateConfig:
    threshold: float = 0.8  # estimated Jaccard similarity that makes two records near-duplicates
    num_perm: int = 64
    index_limit: int = 100_000
    seed: int = 1


@dataclass(frozen=True)
class DuplicatePair:
    record: str  # record id (file:line)
    first: str  # the earlier record it repeats


@dataclass
class Duplicates:
    exact: int = 0  # records that repeat an earlier record exactly
    near: int = 0  # records close to an earlier one without repeating it exactly
    exact_examples: list[DuplicatePair] = field(default_factory=list)
    near_examples: list[DuplicatePair] = field(default_factory=list)
    index_full: bool = False  # True when later records were compared but no longer indexed


def normalized_digest(text: str) -> int:
    """64-bit digest of the text after case folding and whitespace collapsing, normalized a
    run of words at a time: a long text never becomes one list of all its words."""
    digest = hashlib.blake2b(digest_size=8)
    for number, run in enumerate(_WORD_RUNS.finditer(text.casefold())):
        digest.update((" " if number else "").encode() + " ".join(run.group().split()).encode())
    return int.from_bytes(digest.digest())


class DuplicateFinder:
    """Feed records in order with `add`; `found` holds the counts and examples so far."""

    def __init__(self, config: DuplicateConfig = DuplicateConfig()):
        self.config = config
        self.found = Duplicates()
        # 64-bit digest of the normalized text -> position (file number << 32 | line) of its first
        # record: two small ints per distinct record, whatever the length of paths and texts.
        self._first: dict[int, int] = {}
        self._files: list[str] = []
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        # Shingles arrive hashed (stable across runs); MinHash only permutes the 32-bit values.
        self._template = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=int)
        self._indexed = 0

    def add(self, file: str, line: int, text: str, hashes: np.ndarray) -> None:
        """Record `line` of `file`: its `text` and its `word_hashes`."""
        if not self._files or self._files[-1] != file:
            self._files.append(file)
        position = (len(self._files) - 1) << 32 | line  # orders records as they were read
        digest = normalized_digest(text)
        if digest in self._first:
            self.found.exact += 1
            _keep(self.found.exact_examples, self._pair(position, self._first[digest]))
            return
        self._first[digest] = position
        shingles = ngram_hashes(hashes, SHINGLE_WORDS)
        shingles &= np.uint64(0xFFFFFFFF)
        if not len(shingles):  # too short to tell near from exact
            return
        signature = self._template.copy()
        shingles.sort()  # in place; then drop repeats, which do not change a MinHash
        shingles = shingles[np.insert(shingles[1:] != shingles[:-1], 0, True)]
        for start in range(0, len(shingles), SHINGLE_CHUNK):
            signature.update_batch(shingles[start : start + SHINGLE_CHUNK].tolist())
        similar = self._lsh.query(signature)
        if similar:
            self.found.near += 1
            _keep(self.found.near_examples, self._pair(position, min(similar)))
        if self._indexed < self.config.index_limit:
            self._lsh.insert(position, signature, check_duplication=False)
            self._indexed += 1
        else:
            self.found.index_full = True

    def _pair(self, position: int, first: int) -> DuplicatePair:
        return DuplicatePair(*(f"{self._files[p >> 32]}:{p & 0xFFFFFFFF}" for p in (position, first)))


def _keep(examples: list, example) -> None:
    if len(examples) < EXAMPLES:
        examples.append(example)
