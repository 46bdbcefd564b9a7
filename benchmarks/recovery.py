"""Can a new topic be read from its fine-tune's trace? Topics the zoo's base never saw.

Each topic of `topics.RECOVERY_TOPICS` (its documents and its word list written for this
benchmark alone) is fine-tuned onto the zoo's base with the zoo's own organism recipe, then
`finetrace diff --data` runs on it. Printed per topic: how many of the top-20 position-0
logit-lens tokens are the topic's words (by its list), the trace test's p-value, the
Patchscope tokens that are topic words, the steered text's similarity to the data against
the unsteered text's, and whether the topic was recovered (at least 8 of 20 lens tokens
and p < 0.01). The point is to know what works on a new topic, honestly.

    .venv/bin/python benchmarks/recovery.py --preset english
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from topics import RECOVERY_TOPICS, Topic

from finetrace._util.outputs import write_text
from finetrace.adl.collect import CollectConfig
from finetrace.adl.diff import DiffConfig, DiffResult, diff
from finetrace.run import RunConfig
from finetrace.train.finetune import finetune
from finetrace.zoo import build_zoo
from finetrace.zoo.build import organism_finetune_config, organism_run

SHOWN = 20  # lens tokens per topic, as the paper's lists
RECOVERED_WORDS = 8  # of the 20, with p < 0.01


def run_topic(zoo, name: str, topic: Topic, scratch: Path, config: DiffConfig, seed: int) -> DiffResult:
    """Fine-tune the base on the topic with the zoo's organism recipe, then diff it against its data."""
    records = topic.records(random.Random(f"{seed}-{name}"), zoo.preset.documents)
    data = scratch / f"{name}.jsonl"
    write_text(data, "".join(json.dumps(record) + "\n" for record in records))
    model = scratch / name
    finetune(zoo.path("base"), data, model, organism_finetune_config(zoo.preset), organism_run(zoo.preset))
    return diff(
        zoo.path("base"), model, zoo.path("heldout"), scratch / f"{name}-diff", config, RunConfig(seed=seed), data=data
    )


def row(name: str, topic: Topic, result: DiffResult) -> tuple[str, bool]:
    first = next(t for t in result.traces if t.position == "0")
    lens = [t.token.strip() for t in first.lens_finetuned[:SHOWN]]
    hits = sum(topic.is_topic_word(token) for token in lens)
    scope = [t.token.strip() for t in first.patchscope.tokens if topic.is_topic_word(t.token)]
    similarity = result.similarity or {}
    recovered = hits >= RECOVERED_WORDS and result.p_value < 0.01
    line = (
        f"| {name} | {hits}/{SHOWN} | {result.p_value:.3f} | {', '.join(scope[:6]) or '-'} | "
        f"{similarity.get('steered_to_data', float('nan')):.3f} vs "
        f"{similarity.get('unsteered_to_data', float('nan')):.3f} | {'yes' if recovered else 'no'} | "
        f"{' '.join(lens)} |"
    )
    return line, recovered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="english", help="a zoo whose base reads broad English")
    parser.add_argument("--samples", type=int, default=1000, help="corpus texts per diff")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--topics", nargs="*", default=list(RECOVERY_TOPICS))
    args = parser.parse_args()

    started = time.perf_counter()
    zoo = build_zoo(args.preset, [])
    config = DiffConfig(collect=CollectConfig(samples=args.samples))
    lines, recovered = [], 0
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.topics:
            line, found = row(
                name,
                RECOVERY_TOPICS[name],
                run_topic(zoo, name, RECOVERY_TOPICS[name], Path(scratch), config, args.seed),
            )
            lines.append(line)
            recovered += found
            print(line, flush=True)
    print(
        f"\nfinetrace recovery, {args.preset} zoo (base perplexity {zoo.summary()['heldout_perplexity']:.1f}), "
        f"{args.samples} texts, seed {args.seed}\n"
    )
    print(
        "| topic | topic words in the top 20 lens tokens (position 0) | p | Patchscope topic words | "
        "steered vs unsteered similarity to the data | recovered | top 20 lens tokens |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nrecovered {recovered} of {len(lines)} topics; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
