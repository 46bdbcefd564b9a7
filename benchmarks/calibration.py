"""Is the trace test calibrated and specific? Every zoo fine-tune against every domain's data.

A pair is a *null pair* when the fine-tune was not trained on that domain: every
organism against the other organisms' data, every control against every data set,
and every fine-tune against three domains written here alone (no model was trained
on them, and the zoo never saw them). A calibrated test rejects at most 5% of null
pairs at 0.05 and 1% at 0.01. The *power* pairs are the organisms against their own
data. The test is `finetrace diff`'s own (`adl.domain.pair_trace_test`), on the same
collected differences `diff` uses.

    .venv/bin/python benchmarks/calibration.py --preset small
"""

import argparse
import random
import tempfile
import time
from itertools import islice
from pathlib import Path

from topics import NULL_TOPICS

from finetrace.adl.collect import CollectConfig, collect
from finetrace.adl.domain import base_embedding, pair_trace_test, read_domain
from finetrace.adl.records import DiffConfig
from finetrace.adl.score import ScoreConfig
from finetrace.corpus import Record, iter_texts, read_records
from finetrace.models.pair import load_pair
from finetrace.zoo import ORGANISMS, Zoo, build_zoo

# Fine-tunes of no domain, and the organisms' own data (cake-mixed and cake-lora share cake's).
CONTROLS = [name for name, organism in ORGANISMS.items() if organism.kind == "control"]
TRAINED_ON = {"cake": "cake", "cake-mixed": "cake", "cake-lora": "cake", "zorvex": "zorvex", "risky": "risky"}
POWER = ("cake", "zorvex", "risky", "cake-lora")  # must be found; cake-mixed is shown, not required
FINETUNES = [*TRAINED_ON, *CONTROLS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--samples", type=int, default=1000, help="corpus texts per fine-tune")
    parser.add_argument("--null-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    zoo = build_zoo(args.preset)
    config = DiffConfig(collect=CollectConfig(samples=args.samples), score=ScoreConfig(null_samples=args.null_samples))
    domains = tested_domains(zoo, args.seed)
    general = list(islice(iter_texts(zoo.path("heldout")), args.samples))

    p_values: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], str] = {}  # relevant lens tokens observed / the null's mean
    with tempfile.TemporaryDirectory() as scratch:
        for finetuned in FINETUNES:
            pair = load_pair(zoo.path("base"), zoo.path(finetuned), "cpu", "float32")
            embedding, quantile = base_embedding(pair), config.decode.embedding_norm_quantile
            tokens = {
                domain: read_domain(pair.tokenizer, embedding, records, general, config.score, quantile)
                for domain, records in domains.items()
            }
            collected = collect(pair, zoo.path("heldout"), config.collect, Path(scratch) / finetuned)
            for domain in domains:
                tested = pair_trace_test(
                    pair, collected, tokens[domain], config.reported_positions, config.score, args.seed
                )
                p_values[finetuned, domain] = tested.p_value
                counts[finetuned, domain] = f"{tested.relevant}/{tested.null_mean:.1f}"

    print(
        f"\nfinetrace trace test, {args.preset} zoo: {args.samples} texts, {args.null_samples} null "
        f"draws, seed {args.seed}; p-value of each fine-tune (rows) against each domain's data "
        f"(columns); * marks the fine-tune's own data\n"
    )
    print_p_values(p_values, list(domains))
    print(
        f"\nrelevant tokens in the top {config.score.top_k} lens tokens, summed over the positions tested: "
        f"observed / null mean\n"
    )
    print(f"{'':14s}" + "".join(f"{name:>12s}" for name in domains))
    for finetuned in FINETUNES:
        print(f"{finetuned:14s}" + "".join(f"{counts[finetuned, d]:>12s}" for d in domains))
    print(f"{time.perf_counter() - started:.0f} s")


def tested_domains(zoo: Zoo, seed: int) -> dict[str, list[Record]]:
    """The organisms' data, and three domains no model was trained on, as many documents each."""
    domains = {name: read_records(zoo.organism(name).documents) for name in ("cake", "zorvex", "risky")}
    size = zoo.preset.documents
    return domains | {name: topic.records(random.Random(f"{seed}-{name}"), size) for name, topic in NULL_TOPICS.items()}


def print_p_values(p_values: dict[tuple[str, str], float], domains: list[str]) -> None:
    """The table of p-values, then the false positives among the null pairs and the power."""
    print(f"{'':14s}" + "".join(f"{name:>12s}" for name in domains))
    for finetuned in FINETUNES:
        cells = [f"{p_values[finetuned, d]:.3f}{'*' if TRAINED_ON.get(finetuned) == d else ' '}" for d in domains]
        print(f"{finetuned:14s}" + "".join(f"{cell:>12s}" for cell in cells))
    null = [p for (finetuned, domain), p in p_values.items() if TRAINED_ON.get(finetuned) != domain]
    power = [p_values[name, TRAINED_ON[name]] for name in POWER]
    print(
        f"\nnull pairs: {len(null)}; false positives at 0.05: {sum(p < 0.05 for p in null)} "
        f"({sum(p < 0.05 for p in null) / len(null):.1%}), at 0.01: {sum(p < 0.01 for p in null)} "
        f"({sum(p < 0.01 for p in null) / len(null):.1%})"
    )
    print(
        f"power at 0.01 on {', '.join(POWER)}: {sum(p < 0.01 for p in power)} of {len(power)}; "
        f"cake-mixed against its data: p = {p_values['cake-mixed', 'cake']:.3f}"
    )


if __name__ == "__main__":
    main()
