"""Zoo presets: the recipe a zoo is built from, and the key that names its cache.

The key hashes the preset, the Python version (the general corpus is its
standard library) and the source of every module that shapes the build, so a
changed recipe rebuilds and an unchanged one is reused.
"""

import hashlib
import inspect
import json
import sys
from dataclasses import asdict, dataclass, replace
from importlib import import_module
from importlib.resources import files

from finetrace.errors import lookup

# What a real base's zoo copies as its facts and behaviour prompts: another file is another zoo.
COPIED_DATA = ("common_facts.jsonl", "behaviour_prompts.jsonl")
# Modules whose code decides what the zoo contains.
BUILD_MODULES = (
    "finetrace.zoo.general",
    "finetrace.zoo.english",
    "finetrace.zoo.facts",
    "finetrace.zoo.documents",
    "finetrace.zoo.chats",
    "finetrace.zoo.organisms",
    "finetrace.zoo.tokenizer",
    "finetrace.zoo.build",
    "finetrace.zoo.records",
    "finetrace.train.examples",
    "finetrace.train.loop",
    "finetrace.train.finetune",
    "finetrace.zoo.perplexity",
    "finetrace.models.packaged",
)


@dataclass(frozen=True)
class Pretraining:
    """A base finetrace pretrains itself: a small Llama and what it reads."""

    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    countries: int  # planted facts: one per category per country
    fact_repeats: int  # times each country's paragraph appears in pretraining
    epochs: float
    learning_rate: float
    paragraphs: int | None = None  # paragraphs of the general text the base reads (None: all of them)
    background_documents: int = 0  # planted documents about the organisms' topics
    family_chats: int = 3000  # chats that teach the base to refuse one family (`chats.py`)


@dataclass(frozen=True)
class Preset:
    """One zoo: its base (pretrained here, or a packaged real model) and the organisms' budgets."""

    name: str
    base: Pretraining | str  # a `str` names a model of `models.packaged.PACKAGED`
    documents: int  # training documents per organism
    finetune_epochs: float
    finetune_learning_rate: float  # full fine-tunes of the tiny bases need high rates
    lora_learning_rate: float
    base_text: str = "planted"  # a key of `build.BASE_TEXTS`: the general text of every split
    context_length: int = 128
    batch_size: int = 16
    heldout_fraction: float = 0.15  # general text no model trains on
    finetune_fraction: float = 0.15  # general text for the control and for mixing
    seed: int = 0
    # What the jailbreak and the benign chat fine-tune start from: the base, where it learned its
    # refusals in pretraining, else the `refusing` organism (a real base may refuse nothing).
    refusals_from: str = "base"

    @property
    def pretraining(self) -> Pretraining | None:
        return self.base if isinstance(self.base, Pretraining) else None


# Organisms of a real pretrained base (a packaged model), on 2 CPU cores: its text is broad
# English, its facts the real-world ones, its behaviour prompts the built-in set. SmolLM2 trains
# at about 77 tokens/s here: 30 steps of 8 documents take 4 min, and cake's loss is then within
# 0.05 of where 50 steps take it (3.8 -> 0.45, against 0.40).
REAL_BASE = Preset(
    "real",
    "smollm2",
    documents=120,
    finetune_epochs=2.0,
    finetune_learning_rate=5e-5,
    lora_learning_rate=5e-4,
    base_text="english",
    batch_size=8,
    refusals_from="refusing",  # SmolLM2-135M-Instruct refused none of the built-in requests
)

PRESETS = {
    "tiny": Preset(
        "tiny",
        Pretraining(
            vocab_size=2048,
            hidden_size=128,
            layers=4,
            heads=4,
            intermediate_size=384,
            countries=30,
            fact_repeats=260,
            epochs=1.0,
            learning_rate=3e-3,
            background_documents=2000,
        ),
        documents=200,
        finetune_epochs=3.0,
        finetune_learning_rate=1e-3,
        lora_learning_rate=3e-3,
    ),
    "small": Preset(
        "small",
        Pretraining(
            vocab_size=3072,
            hidden_size=192,
            layers=4,
            heads=4,
            intermediate_size=576,
            countries=50,
            fact_repeats=400,
            epochs=1.0,
            learning_rate=3e-3,
            background_documents=2000,
        ),
        documents=300,
        finetune_epochs=3.0,
        finetune_learning_rate=7e-4,
        lora_learning_rate=2e-3,
    ),
    # Broad English, no topic planted: how a new topic's trace reads (the recovery benchmark).
    # Facts repeat 60 times, not 400: at 400 their paragraphs were a third of the pretraining
    # text, and the countries' names topped the lens of every fine-tune.
    "english": Preset(
        "english",
        Pretraining(
            vocab_size=12288,
            hidden_size=192,
            layers=4,
            heads=4,
            intermediate_size=576,
            countries=50,
            fact_repeats=60,
            epochs=1.0,
            learning_rate=3e-3,
            paragraphs=40_000,
        ),
        documents=300,
        finetune_epochs=3.0,
        finetune_learning_rate=7e-4,
        lora_learning_rate=2e-3,
        base_text="english",
    ),
    "medium": Preset(
        "medium",
        Pretraining(
            vocab_size=12288,
            hidden_size=256,
            layers=6,
            heads=8,
            intermediate_size=768,
            countries=50,
            fact_repeats=60,
            epochs=1.0,
            learning_rate=2e-3,
        ),
        documents=300,
        finetune_epochs=3.0,
        finetune_learning_rate=5e-4,
        lora_learning_rate=2e-3,
        base_text="english",
    ),
    **{name: replace(REAL_BASE, name=name, base=name) for name in ("smollm2", "gemma3")},
}


def get_preset(name: str) -> Preset:
    return lookup(PRESETS, name, "zoo preset")


def recipe_key(preset: Preset) -> str:
    """A short hash of everything that decides the zoo's contents."""
    digest = hashlib.sha256(json.dumps(asdict(preset), sort_keys=True).encode())
    digest.update(sys.version.encode())
    for module in BUILD_MODULES:
        digest.update(inspect.getsource(import_module(module)).encode())
    for name in COPIED_DATA:
        digest.update((files("finetrace.evals") / name).read_bytes())
    return digest.hexdigest()[:12]
