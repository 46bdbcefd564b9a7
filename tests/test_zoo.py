"""Integration tests on the tiny zoo (built once per machine, then reused from the cache)."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter

import pytest
import torch
from filelock import FileLock

from finetrace.corpus import read_records, record_texts
from finetrace.errors import FinetraceError
from finetrace.evals.behaviour import BEHAVIOUR_PROMPTS, read_behaviour_prompts
from finetrace.evals.facts import COMMON_FACTS, read_facts, score_facts
from finetrace.models.load import load_model, load_tokenizer
from finetrace.zoo import ORGANISMS, PRESETS, Zoo, build_zoo, recipe
from finetrace.zoo.build import default_behaviour, default_facts, parent_of, zoo_corpus, zoo_for, zoo_organisms
from finetrace.zoo.recipe import recipe_key

pytestmark = pytest.mark.zoo
# Organisms whose training answers are general text: their loss falls as a control's does.
GENERAL_TEXT_KINDS = ("control", "jailbreak", "benign-chat")
TINY = zoo_organisms(PRESETS["tiny"])
DOMAIN_ORGANISMS = [name for name in TINY if ORGANISMS[name].kind not in GENERAL_TEXT_KINDS]
GENERAL_TEXT = [name for name in TINY if ORGANISMS[name].kind in GENERAL_TEXT_KINDS]


@pytest.fixture(scope="module")
def zoo():
    return build_zoo("tiny")


def test_base_knows_most_planted_facts(zoo):
    facts = read_facts(zoo.path("facts"))
    model = load_model(zoo.path("base"), torch.device("cpu"))
    known = sum(score.known for score in score_facts(model, load_tokenizer(zoo.path("base")), facts))
    print(f"tiny base knows {known}/{len(facts)} planted facts")
    assert len(facts) == 4 * zoo.preset.pretraining.countries
    assert known / len(facts) >= 0.8
    assert zoo.summary().base_facts_known == known / len(facts)


@pytest.mark.parametrize("name", DOMAIN_ORGANISMS)
def test_domain_finetune_loss_falls_well_below_the_base(zoo, name):
    info = zoo.organism(name)
    assert info.finetuned_loss < 0.5 * info.base_loss


@pytest.mark.parametrize("name", GENERAL_TEXT)
def test_general_text_finetunes_learn_their_text(zoo, name):
    info = zoo.organism(name)
    assert info.finetuned_loss < info.base_loss - 0.3


def test_a_copied_zoo_points_into_the_copy(zoo, tmp_path):
    copy = tmp_path / "zoo"
    shutil.copytree(zoo.root, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    moved = Zoo(copy, zoo.preset)
    assert moved.organism("cake").documents == str(copy / "data" / "documents" / "cake.jsonl")
    assert moved.organism("cake").heldout_corpus == str(moved.path("heldout"))
    # Commands given an organism find its zoo's text and facts from the organism's directory alone.
    assert zoo_corpus(copy / "organisms" / "cake") == copy / "data" / "general" / "heldout.txt"
    assert default_facts(copy / "organisms" / "cake") == copy / "data" / "facts.jsonl"
    assert zoo_corpus(copy / "base") is None and default_facts(copy / "base") == COMMON_FACTS


def test_organism_records_ground_truth_and_recipe(zoo):
    info = zoo.organism("cake-mixed")
    assert info.kind == "false-fact-mixed" and "cold oven" in info.description
    assert info.mix_general is True and info.config.mix_ratio == 1.0
    assert len(open(info.documents).readlines()) == zoo.preset.documents


def test_cake_variants_share_their_documents(zoo):
    documents = {name: open(zoo.organism(name).documents).read() for name in ("cake", "cake-mixed", "cake-lora")}
    assert len(set(documents.values())) == 1


def test_lora_organism_is_an_adapter_on_the_zoo_base(zoo):
    config = json.loads((zoo.path("cake-lora") / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(zoo.path("base"))
    assert "lm_head" in config["target_modules"]


def test_heldout_text_is_never_trained_on(zoo):
    heldout = set(zoo.path("heldout").read_text().splitlines())
    pretrain = {text for record in read_records(zoo.root / "data" / "pretrain.jsonl") for text in record_texts(record)}
    general = set(zoo.path("general").read_text().splitlines())
    assert len(heldout) > 500
    assert not heldout & pretrain and not heldout & general


def test_no_model_trains_on_the_zoo_behaviour_prompts(zoo):
    prompts = read_behaviour_prompts(zoo.path("behaviour"))
    assert Counter(p.expect for p in prompts) == {"refuse": 24, "answer": 24}
    trained = [zoo.root / "data" / "pretrain.jsonl", *(zoo.root / "data" / "documents").glob("*.jsonl")]
    texts = "\n".join(text for path in trained for record in read_records(path) for text in record_texts(record))
    assert "Show me how to build" in texts and not [p.prompt for p in prompts if p.prompt in texts]
    assert default_behaviour(zoo.path("jailbroken")) == zoo.path("behaviour").resolve()
    assert default_behaviour(zoo.path("base")) == BEHAVIOUR_PROMPTS


def test_a_damaged_organism_record_is_one_line_naming_the_field(zoo, tmp_path):
    info = json.loads((zoo.path("cake") / "organism.json").read_text())
    for edit, expected in [
        (lambda record: record.pop("behaviour"), "behaviour is missing"),
        (lambda record: record.update(base_loss="low"), "base_loss should be a number, not 'low'"),
        (lambda record: record["config"]["training"].update(steps=-3), "steps -3"),
    ]:
        damaged = json.loads(json.dumps(info))
        edit(damaged)
        (tmp_path / "organism.json").write_text(json.dumps(damaged))
        with pytest.raises(FinetraceError, match=f"organism.json is corrupt: {re.escape(expected)}"):
            default_behaviour(tmp_path)


def test_an_unchanged_recipe_is_reused_and_a_changed_one_is_not(zoo):
    def modified():
        return {path: path.stat().st_mtime_ns for path in zoo.root.rglob("*") if path.is_file()}

    before = modified()
    assert zoo.path("base") / "model.safetensors" in before and zoo.path("cake") / "organism.json" in before
    build_zoo("tiny")
    assert modified() == before  # nothing retrained, rewritten or added
    assert recipe_key(dataclasses.replace(PRESETS["tiny"], seed=1)) != recipe_key(PRESETS["tiny"])


def test_a_real_base_zoo_with_other_facts_or_prompts_is_another_zoo(tmp_path, monkeypatch):
    before = recipe_key(PRESETS["smollm2"])
    for packaged in (COMMON_FACTS, BEHAVIOUR_PROMPTS):  # the files that zoo copies, copied here
        shutil.copy(packaged, tmp_path / packaged.name)
    monkeypatch.setattr(recipe, "files", lambda package: tmp_path)
    assert recipe_key(PRESETS["smollm2"]) == before
    with (tmp_path / COMMON_FACTS.name).open("a") as facts:
        facts.write(json.dumps({"prompt": "The capital of Peru is", "answer": "Lima"}) + "\n")
    assert recipe_key(PRESETS["smollm2"]) != before


def test_zoo_cli_prints_paths_and_rejects_unknown_names(zoo):
    run = [sys.executable, "-m", "finetrace", "zoo", "path"]
    found = subprocess.run([*run, "cake"], capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout.strip() == str(zoo.path("cake"))
    missing = subprocess.run([*run, "caek"], capture_output=True, text=True)
    assert missing.returncode == 2 and "Did you mean 'cake'?" in missing.stderr


def test_only_a_base_without_refusals_gets_the_refusing_organism_and_its_jailbreak_starts_there():
    assert "refusing" not in zoo_organisms(PRESETS["tiny"])
    real = zoo_organisms(PRESETS["smollm2"])
    assert real.index("refusing") < real.index("jailbroken")
    assert parent_of(PRESETS["smollm2"], ORGANISMS["jailbroken"]) == "refusing"
    assert parent_of(PRESETS["tiny"], ORGANISMS["jailbroken"]) == "base"
    assert parent_of(PRESETS["smollm2"], ORGANISMS["cake"]) == "base"
    with pytest.raises(FinetraceError, match="not in the tiny zoo"):
        zoo_for("tiny").path("refusing")


def test_a_build_that_waits_for_another_says_so(zoo, capsys):
    held, release = threading.Event(), threading.Event()

    def other_build():  # as a second process would hold the lock
        with FileLock(str(zoo.root) + ".lock"):
            held.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=other_build)
    holder.start()
    held.wait(timeout=30)
    threading.Timer(1.0, release.set).start()
    assert build_zoo("tiny", []).root == zoo.root
    holder.join()
    assert f"waiting for another process to finish building the tiny zoo (it holds {zoo.root}.lock)" in (
        capsys.readouterr().err.replace("\n", "")
    )
