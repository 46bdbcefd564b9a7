"""The zoo's records: `organism.json` beside each organism, `zoo.json` at the zoo's root."""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

from finetrace._util.records import Result
from finetrace.train.config import FinetuneConfig

ORGANISM_SCHEMA, ZOO_SCHEMA = 1, 1
ORGANISM_NAME, ZOO_NAME = "organism.json", "zoo.json"
ORGANISM_PATHS = ("documents", "heldout_corpus", "facts", "behaviour")  # stored relative to the organism
# The zoo's own items, by name, relative to its root; everything else it holds is an organism.
SPECIAL_PATHS = {
    "base": "base",
    "facts": "data/facts.jsonl",
    "behaviour": "data/behaviour.jsonl",
    "heldout": "data/general/heldout.txt",
    "general": "data/general/finetune.txt",
}


@dataclass(frozen=True)
class OrganismRecord(Result):
    """An organism: what it is, what it was fine-tuned from and on, and what training did."""

    name: str
    kind: str
    description: str
    # Its inputs, stored relative to the organism (a zoo can move); `resolved` makes them absolute.
    documents: str
    heldout_corpus: str
    facts: str
    behaviour: str
    parent: str  # the model it was fine-tuned from: the base of its audit
    licence: str
    adapter: bool
    mix_general: bool
    config: FinetuneConfig
    base_loss: float  # on its documents, before and after fine-tuning
    finetuned_loss: float
    build_seconds: float
    schema_version: int = ORGANISM_SCHEMA

    def resolved(self, directory: str | Path) -> Self:
        """The record with its paths made absolute, from the organism's `directory`."""
        return replace(self, **{key: str((Path(directory) / getattr(self, key)).resolve()) for key in ORGANISM_PATHS})


@dataclass(frozen=True)
class TextSource:
    """Where part of the base's English came from, and why it may be used."""

    name: str
    licence: str
    package: str | None
    version: str | None
    why: str


@dataclass(frozen=True)
class PackagedBase:
    """A real pretrained base, as the zoo fetched it."""

    name: str
    packages: list[str]
    gguf_sha256: str
    licence: str
    terms: str


@dataclass(frozen=True)
class ZooSummary(Result):
    """A zoo: its preset, where its base and text came from, and how well the base does."""

    preset: str
    key: str
    base_model: PackagedBase | None  # None: the base was pretrained here
    sources: list[TextSource]
    organisms: list[str]
    facts: int
    base_facts_known: float  # share of the facts the base knows
    heldout_perplexity: float
    schema_version: int = ZOO_SCHEMA
