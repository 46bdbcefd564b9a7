"""Exact and near-duplicate records, found in one streaming pass.

Exact: the same text after case folding and whitespace collapsing. Near: an
estimated Jaccard similarity of word 5-gram sets at or above a threshold, by
MinHash with locality-sensitive hashing (datasketch). The near-duplicate index
holds at most `index_limit` records, so memory stays bounded on any input;
records past the limit are still compared against it.
"""

import hashlib
from dataclasses import dataclass, field

from datasketch import MinHash, MinHashLSH

SHINGLE_WORDS = 5
EXAMPLES = 5


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


def normalize(text: str) -> str:
    return " ".join(text.casefold().split())


class DuplicateFinder:
    """Feed records in order with `add`; `found` holds the counts and examples so far."""

    def __init__(self, config: DuplicateConfig = DuplicateConfig()):
        self.config = config
        self.found = Duplicates()
        self._first: dict[bytes, str] = {}  # digest of the normalized text -> first record id
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._template = MinHash(num_perm=config.num_perm, seed=config.seed)
        self._indexed = 0

    def add(self, record_id: str, text: str) -> None:
        normal = normalize(text)
        digest = hashlib.blake2b(normal.encode(), digest_size=12).digest()
        if digest in self._first:
            self.found.exact += 1
            _keep(self.found.exact_examples, DuplicatePair(record_id, self._first[digest]))
            return
        self._first[digest] = record_id
        words = normal.split()
        if len(words) < SHINGLE_WORDS:  # too short to tell near from exact
            return
        signature = MinHash(num_perm=self.config.num_perm, permutations=self._template.permutations,
                            scheme=self._template.scheme)
        signature.update_batch([" ".join(words[i:i + SHINGLE_WORDS]).encode()
                                for i in range(len(words) - SHINGLE_WORDS + 1)])
        similar = self._lsh.query(signature)
        if similar:
            self.found.near += 1
            _keep(self.found.near_examples, DuplicatePair(record_id, min(similar, key=_position)))
        if self._indexed < self.config.index_limit:
            self._lsh.insert(record_id, signature, check_duplication=False)
            self._indexed += 1
        else:
            self.found.index_full = True


def _position(record_id: str) -> tuple[str, int]:
    path, _, line = record_id.rpartition(":")
    return path, int(line)


def _keep(examples: list, example) -> None:
    if len(examples) < EXAMPLES:
        examples.append(example)
