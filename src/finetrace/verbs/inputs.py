"""What a verb makes of its inputs before any model loads: the zoo's own text, facts and
behaviour prompts for a zoo organism, where the caller gives none."""

from pathlib import Path

from finetrace._util.fingerprints import data_sha256
from finetrace.errors import FinetraceError
from finetrace.models.load import weights_digest
from finetrace.zoo.build import default_behaviour, default_facts, organism_record, zoo_corpus


def corpus_for(finetuned: str | Path, corpus: str | Path | None) -> str | Path:
    """`corpus`, else the held-out text of the zoo `finetuned` belongs to."""
    if corpus is not None:
        return corpus
    held_out = zoo_corpus(finetuned)
    if held_out is None:
        raise FinetraceError(f"{finetuned} is not a zoo organism: give the unrelated text with --corpus")
    return held_out


def facts_for(finetuned: str | Path, facts: str | Path | None) -> str | Path:
    """`facts`, else the zoo's planted facts for an organism, else finetrace's common-knowledge ones."""
    return facts if facts is not None else default_facts(finetuned)


def data_for(finetuned: str | Path, data: str | Path | None) -> str | Path | None:
    """`data`, else the documents a zoo organism was fine-tuned on; None for any other model."""
    if data is not None:
        return data
    info = organism_record(finetuned)
    return Path(info.documents) if info else None


def behaviour_for(finetuned: str | Path, behaviour: str | Path | bool) -> str | Path | None:
    """The behaviour prompt set: a path as given; True: a zoo organism's own, else finetrace's
    built-in set; False: none (the refusal rates are skipped)."""
    if isinstance(behaviour, bool):
        return default_behaviour(finetuned) if behaviour else None
    return behaviour


def input_digests(models: dict[str, str | Path | None], files: dict[str, str | Path | None]) -> dict[str, str]:
    """What went into a run, by role: the sha256 of each model's weights and config files, and of
    each data file (a hub dataset by its id); roles given None are left out."""
    digests = {role: weights_digest(model) for role, model in models.items() if model is not None}
    return digests | {role: data_sha256(path) for role, path in files.items() if path is not None}
