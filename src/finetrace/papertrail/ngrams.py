"""Word n-grams as 64-bit hashes, computed with numpy and stable across runs and machines
(crc32 of each word, then a polynomial over the window), so the same data gives the same
duplicates and overlaps every time."""

import re
import zlib

import numpy as np

WORD = re.compile(r"\w+")
MULTIPLIER = np.uint64(1099511628211)  # the 64-bit FNV prime: odd, so windows mix well
CACHED_WORDS = 1 << 20  # words repeat: a bounded cache of their hashes is most of the speed
LONG_TEXT = 1 << 20  # characters from which a text's words are taken one at a time
_cache: dict[str, int] = {}


def word_hashes(text: str) -> np.ndarray:
    """(words,) hashes of the lower-case words of `text`. A long text is read one word at a
    time, so it never becomes a list of word strings (about 60 bytes per word); a short one
    is split at once, which is faster."""
    if len(_cache) > CACHED_WORDS:
        _cache.clear()
    folded = text.casefold()
    tokens = WORD.findall(folded) if len(folded) < LONG_TEXT else (m.group() for m in WORD.finditer(folded))
    return np.fromiter((_cache.get(token) or _hash(token) for token in tokens), dtype=np.uint64)


def _hash(token: str) -> int:
    value = zlib.crc32(token.encode())
    if len(_cache) < CACHED_WORDS:  # bounded within one long text too
        _cache[token] = value
    return value


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """(len - n + 1,) hashes of every window of `n` word hashes; empty when there are fewer."""
    count = len(hashes) - n + 1
    if n < 1 or count < 1:
        return np.empty(0, dtype=np.uint64)
    window = np.zeros(count, dtype=np.uint64)
    for k in range(n):  # uint64 arithmetic wraps, which is the modulus we want; in place: no copies
        window *= MULTIPLIER
        window += hashes[k : k + count]
    return window
