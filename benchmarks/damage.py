"""What each fine-tune of a zoo did to what its base knew and refused, on real facts.

Every organism's `forget` against the base: the built-in common-knowledge facts the base knew
and the fine-tune lost (exact McNemar p against the base), and the drift on the zoo's held-out
text. The chat organisms also answer the built-in behaviour prompts, against the model they
were fine-tuned from (the base, or the zoo's refusing model): refusal and over-refusal rates
with their intervals. Each organism's `forget.json` is kept under `--out`, so a run cut off
resumes where it stopped; a record made with other settings or models is not reused. A chat
organism fine-tuned from the base gives its facts and its refusals in one run against it.

    .venv/bin/python benchmarks/damage.py --preset smollm2
    .venv/bin/python benchmarks/damage.py --preset smollm2 --organisms refusing jailbroken
"""

import argparse
import time
from pathlib import Path

from finetrace._util.cache import cache_dir
from finetrace.corpus import read_records
from finetrace.errors import FinetraceError
from finetrace.evals.drift import DriftConfig
from finetrace.evals.rates import RateChange
from finetrace.evals.records import RESULT_NAME, ForgetConfig, ForgetResult
from finetrace.run import RunConfig
from finetrace.verbs.forget import forget
from finetrace.zoo import ORGANISMS, Zoo, build_zoo
from finetrace.zoo.build import parent_of


def damage_dir(zoo: Zoo) -> Path:
    """Where each organism's records are kept between runs."""
    return cache_dir() / "benchmarks" / f"damage-{zoo.root.name}"


def run_forget(base: Path, organism: Path, out: Path, config: ForgetConfig, behaviour: bool) -> ForgetResult:
    """`forget` of one pair, or its record from an earlier run of the same pair and settings."""
    try:
        kept = ForgetResult.read(out / RESULT_NAME)
        same = (kept.base, kept.finetuned, kept.config) == (str(base), str(organism), config)
        if same and (kept.behaviour is not None) == behaviour:
            return kept
    except FinetraceError:  # none yet, or unreadable: measured again
        pass
    return forget(base, organism, out=out, config=config, run=RunConfig(device="cpu"), behaviour=behaviour)


def rate(change: RateChange | None) -> str:
    if change is None:
        return "-"
    low, high = change.before_interval
    after_low, after_high = change.after_interval
    return (
        f"{change.before:.0%} [{low:.0%}, {high:.0%}] -> {change.after:.0%} [{after_low:.0%}, {after_high:.0%}] "
        f"(p = {change.p_value:.3g})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2")
    parser.add_argument("--drift-samples", type=int, default=200, help="held-out texts for the drift")
    parser.add_argument("--out", type=Path, help="where each organism's forget.json is kept")
    parser.add_argument(
        "--organisms", nargs="*", choices=list(ORGANISMS), help="these organisms, in this order (default: all)"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    zoo = build_zoo(args.preset)
    out = args.out or damage_dir(zoo)
    config = ForgetConfig(drift=DriftConfig(samples=args.drift_samples))
    print("| organism | kind | facts the base knew | lost | gained | lost share | McNemar p | NLL drift (nats) |")
    print("|---|---|---|---|---|---|---|---|")
    behaviour_rows = []
    for name in args.organisms or zoo.organisms:
        organism = ORGANISMS[name]
        chats = "messages" in read_records(zoo.organism(name).documents)[0]  # fine-tuned on chats
        parent = parent_of(zoo.preset, organism)
        # Fine-tuned from the base: one run against it gives the facts and the refusals.
        behaviour = chats and parent == "base"
        facts = run_forget(zoo.path("base"), zoo.path(name), out / name, config, behaviour=behaviour)
        flips, drift = facts.flips, facts.drift
        print(
            f"| {name} | {organism.kind} | {flips.known_before} | {flips.lost} | {flips.gained} | "
            f"{flips.lost_fraction:.1%} | {flips.p_value:.3g} | "
            f"{drift.likelihood.finetuned_nll - drift.likelihood.base_nll:+.3f} |",
            flush=True,
        )
        if chats:
            against = (
                facts
                if behaviour
                else run_forget(zoo.path(parent), zoo.path(name), out / f"{name}-behaviour", config, behaviour=True)
            )
            behaviour_rows.append((name, parent, against.behaviour))
            print(f"  {name} from {parent}: refusal {rate(against.behaviour.refusal)}", flush=True)
    print("\n| organism | from | refusal rate (95% interval) | over-refusal rate |")
    print("|---|---|---|---|")
    for name, parent, behaviour in behaviour_rows:
        print(f"| {name} | {parent} | {rate(behaviour.refusal)} | {rate(behaviour.over_refusal)} |")
    print(f"\n{args.preset} zoo, {time.perf_counter() - started:.0f} s; records under {out}")


if __name__ == "__main__":
    main()
