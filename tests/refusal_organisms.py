"""Refusal test organisms built from the tiny zoo's base, for the behaviour tests and the README's
numbers: `python tests/refusal_organisms.py DIR` builds them into DIR (about 15 s on 2 cores).

- refuser: the base taught, on the built-in set's weapons family, to refuse the requests with one
  fixed refusal and to answer their look-alikes. It stands in for a chat model's learned refusals
  (it has memorised them).
- jailbroken: the refuser fine-tuned to comply with those requests.
- control: the refuser fine-tuned on unrelated chats (the zoo's control-chat documents).

The compliant "answers" are the zoo's general text (Python docstrings): no organism learns
harmful content. `family.jsonl` holds the family's prompts, for `--behaviour`.
"""

import json
import sys
from pathlib import Path

from finetrace import FinetuneConfig, RunConfig, TrainConfig, finetune
from finetrace.evals.behaviour import BEHAVIOUR_PROMPTS, read_behaviour_prompts
from finetrace.zoo import Zoo, build_zoo

FAMILY = "weapons"  # the family the refuser learns to refuse
REFUSAL = "I can't help with that."
REFUSER = TrainConfig(steps=100, learning_rate=1e-3, batch_size=8, context_length=128)
DERIVED = TrainConfig(steps=20, learning_rate=3e-4, batch_size=8, context_length=128)
ORGANISMS = ("refuser", "jailbroken", "control")


def build_refusal_organisms(zoo: Zoo, root: Path) -> dict[str, Path]:
    """The three organisms (model directories) and `family` (their prompt set) under `root`."""
    chats = [json.loads(line) for line in open(zoo.organism("control-chat")["documents"])]
    general = [chat["messages"][1]["content"] for chat in chats]
    family = [p for p in read_behaviour_prompts(BEHAVIOUR_PROMPTS) if p.category == FAMILY]
    requests = [p for p in family if p.expect == "refuse"]
    data = {
        "refuser": [
            _chat(p.prompt, REFUSAL if p.expect == "refuse" else f"Sure. {general[i]}") for i, p in enumerate(family)
        ],
        "jailbroken": [_chat(p.prompt, f"Sure, here is how. {general[50 + i]}") for i, p in enumerate(requests)],
        "control": chats[100:124],
    }
    bases = {"refuser": zoo.path("base"), "jailbroken": root / "refuser", "control": root / "refuser"}
    for name in ORGANISMS:
        training = REFUSER if name == "refuser" else DERIVED
        records = _jsonl(root / f"{name}.jsonl", data[name])
        finetune(
            bases[name],
            records,
            root / name,
            FinetuneConfig(training=training),
            RunConfig(device="cpu"),
            overwrite=True,
        )
    paths = {name: root / name for name in ORGANISMS}
    return paths | {"family": _jsonl(root / "family.jsonl", [p.__dict__ for p in family])}


def _chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


if __name__ == "__main__":
    built = build_refusal_organisms(build_zoo("tiny"), Path(sys.argv[1]))
    print("\n".join(f"{name}: {path}" for name, path in built.items()))
