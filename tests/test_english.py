"""The zoo's broad English corpus, read from the real installed sources (`make english`)."""

import dataclasses
import re
from collections import Counter
from pathlib import Path

import pytest

from finetrace.errors import FinetraceError
from finetrace.papertrail.licences import spdx
from finetrace.zoo.english import SOURCES, english_paragraphs, installed_version, split_paragraphs

pytestmark = pytest.mark.slow  # reads the Debian English corpus

DEBIAN_SOURCES = ["wordnet", "kjv", "devil"]
# Clean paragraphs per source, well under what the installed packages give.
FLOORS = {"wordnet": 90_000, "kjv": 29_000, "devil": 1_000, "docstrings": 5_000}
# Everyday subjects a base must have read about; the words are the and a few more.
SUBJECTS = {
    "health": ("hospital", "doctor", "medicine", "nurse", "illness"),
    "sport": ("football", "match", "game", "team", "race"),
    "food": ("bread", "cook", "meat", "fruit", "meal"),
    "weather": ("rain", "weather", "wind", "snow", "storm"),
    "travel": ("train", "travel", "journey", "ship", "road"),
    "money": ("money", "bank", "price", "pay", "coin"),
    "law": ("court", "law", "judge", "crime", "prison"),
    "music": ("song", "music", "sing", "instrument", "dance"),
    "farming": ("farm", "harvest", "crop", "cattle", "barn"),
    "machines": ("engine", "machine", "wheel", "motor", "tool"),
}
SUBJECT_FLOOR = 200  # paragraphs that mention a subject, from the Debian sources alone
WORD_FLOOR = 20  # paragraphs that mention each word
MARKUP = re.compile(r"[{}\[\]<>\\|`]|\s{2}")
SOURCE_LEFTOVERS = {  # what each source's raw format would leave behind if parsed wrongly
    "wordnet": re.compile(r"\w\((a|p|ip)\)|\w_\w|^\d{8} "),
    "kjv": re.compile(r"^\d?[A-Z][a-z]*\d+:\d+"),
    "devil": re.compile(r"^[A-Z][A-Z' -]+, (n|v|adj|adv)\.|\b_\w+_\b"),
    "docstrings": re.compile(r">>>"),
}


@pytest.fixture(scope="module")
def paragraphs():
    return english_paragraphs()


@pytest.fixture(scope="module")
def debian_paragraphs(paragraphs):
    return [p for p in paragraphs if p.source in DEBIAN_SOURCES]


def test_each_source_gives_at_least_its_floor_of_paragraphs(paragraphs):
    counts = Counter(p.source for p in paragraphs)
    assert set(counts) == set(SOURCES)
    for source, floor in FLOORS.items():
        assert counts[source] >= floor, (source, counts[source])


def test_everyday_subjects_are_covered_by_the_debian_sources(debian_paragraphs):
    vocabularies = [set(re.findall(r"[a-z]+", p.text.lower())) for p in debian_paragraphs]
    for subject, words in SUBJECTS.items():
        per_word = {w: sum(w in vocabulary for vocabulary in vocabularies) for w in words}
        mentions = sum(not vocabulary.isdisjoint(words) for vocabulary in vocabularies)
        assert mentions >= SUBJECT_FLOOR, (subject, mentions)
        assert min(per_word.values()) >= WORD_FLOOR, (subject, per_word)


def test_paragraphs_are_single_lines_of_prose_without_markup(paragraphs):
    for paragraph in paragraphs:
        assert "\n" not in paragraph.text and paragraph.text == paragraph.text.strip()
        assert not MARKUP.search(paragraph.text), paragraph
        assert not SOURCE_LEFTOVERS[paragraph.source].search(paragraph.text), paragraph
        assert len(paragraph.text.split()) >= 8


def test_sources_are_parsed_into_their_units(paragraphs):
    texts = {p.text: p.source for p in paragraphs}
    hospital = "Hospital, infirmary: a health facility where patients receive treatment"
    assert texts[hospital] == "wordnet"
    assert (
        texts[
            "Abortion pill, mifepristone, RU 486: an abortion-inducing drug (trade name "
            "RU 486) developed in France; when taken during the first five weeks of "
            "pregnancy it blocks the action of progesterone so that the uterus sloughs off "
            "the embryo"
        ]
        == "wordnet"
    )
    absurdity = "Absurdity: A statement or belief manifestly inconsistent with one's own opinion."
    assert texts[absurdity] == "devil"
    kjv = [p.text for p in paragraphs if p.source == "kjv"]
    assert kjv[0] == "In the beginning God created the heaven and the earth."
    # The last verse repeats 2 Thessalonians 3:18 word for word, so the one before it is last.
    assert kjv[-1] == (
        "He which testifieth these things saith, Surely I come quickly. Amen. Even so, come, Lord Jesus."
    )


def test_paragraphs_are_unique_and_keep_the_order_of_sources(paragraphs):
    texts = [p.text for p in paragraphs]
    assert len(set(texts)) == len(texts)
    order = list(dict.fromkeys(p.source for p in paragraphs))
    assert order == list(SOURCES)


def test_order_and_split_are_deterministic(debian_paragraphs):
    again = english_paragraphs(DEBIAN_SOURCES)
    assert again == debian_paragraphs
    texts = [p.text for p in again]
    splits = split_paragraphs(texts, finetune=0.1, heldout=0.05)
    assert splits == split_paragraphs([p.text for p in debian_paragraphs], 0.1, 0.05)
    parts = [splits.pretrain, splits.finetune, splits.heldout]
    assert sorted(t for part in parts for t in part) == sorted(texts)
    assert abs(len(splits.heldout) / len(texts) - 0.05) < 0.01
    assert abs(len(splits.finetune) / len(texts) - 0.1) < 0.01


def test_every_source_records_an_spdx_licence_and_its_installed_package():
    for name, source in SOURCES.items():
        assert spdx(source.licence) == source.licence, name
        assert len(source.why_clean.split()) >= 5, name
        if source.package is not None:
            assert re.match(r"\d", installed_version(source.package)), name


def test_a_missing_source_names_its_install_line(monkeypatch):
    gone = dataclasses.replace(SOURCES["kjv"], files=(Path("/nonexistent/bible"),))
    monkeypatch.setitem(SOURCES, "kjv", gone)
    install_line = "apt-get install -y --no-install-recommends bible-kjv"
    with pytest.raises(FinetraceError, match=install_line):
        english_paragraphs(["wordnet", "kjv"])
    with pytest.raises(FinetraceError, match="known: wordnet, kjv, devil, docstrings"):
        english_paragraphs(["gutenberg"])
    with pytest.raises(FinetraceError, match="apt-get install .* no-such-package"):
        installed_version("no-such-package")
