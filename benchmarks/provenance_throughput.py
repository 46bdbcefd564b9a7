"""Throughput and peak memory of `finetrace provenance` on large generated JSONL.

For each size, one file of ~1 KB records (some with personal data, some repeated or
nearly repeated) is written once, then two processes read it: the baseline reads and
parses every line (the floor any scan pays), finetrace runs the full scan. Each prints
its own peak resident memory, so the two do not share a measurement.

    .venv/bin/python benchmarks/provenance_throughput.py --sizes-mb 100 1000
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the of and to in is was for on that with as by at from this are be or an it his which "
    "river mill baker flour oven market town harbour engine ledger account invoice season "
    "harvest bridge tower garden letter window station kitchen lantern meadow orchard"
).split()
PII = [
    "Contact jane.doe@example.com for details.",
    "Call +44 20 7946 0958 today.",
    "Card 4111 1111 1111 1111 on file.",
    "IBAN GB82 WEST 1234 5698 7654 32.",
    "From 192.168.1.20.",
]


def write_data(path: Path, megabytes: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    recent: list[str] = []
    with path.open("w") as file:
        while file.tell() < megabytes * 1_000_000:
            roll = rng.random()
            if roll < 0.02 and recent:  # an exact repeat
                text = rng.choice(recent)
            elif roll < 0.03 and recent:  # a near repeat
                text = rng.choice(recent) + " " + rng.choice(WORDS)
            else:
                text = " ".join(rng.choices(WORDS, k=160))
                if roll > 0.99:
                    text += " " + rng.choice(PII)
                recent = (recent + [text])[-100:]
            file.write(json.dumps({"text": text, "source": "benchmark"}) + "\n")


def child(mode: str, path: Path) -> None:
    start = time.perf_counter()
    if mode == "parse":
        records = sum(1 for line in path.open(encoding="utf-8") if json.loads(line))
        found = f"{records} records"
    else:
        from finetrace.evals.facts import COMMON_FACTS
        from finetrace.papertrail import provenance
        from finetrace.papertrail.contamination import evaluation_sets

        report = provenance(path, "CC-BY-4.0", evaluations=evaluation_sets(COMMON_FACTS))
        found = (
            f"{report.records} records, {report.pii.total} PII, {report.duplicates.exact} exact and "
            f"{report.duplicates.near} near duplicates"
        )
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "found": found}))


def measure(mode: str, path: Path) -> dict:
    run = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    with tempfile.TemporaryDirectory() as scratch:
        for megabytes in args.sizes_mb:
            path = Path(scratch) / f"data-{megabytes}mb.jsonl"
            write_data(path, megabytes)
            size = path.stat().st_size / 1e6
            parse, scan = measure("parse", path), measure("scan", path)
            print(
                f"{size:.0f} MB: read+parse {parse['seconds']:.1f} s ({size / parse['seconds']:.1f} MB/s, "
                f"peak {parse['peak_mib']:.0f} MiB); finetrace provenance {scan['seconds']:.1f} s "
                f"({size / scan['seconds']:.1f} MB/s, peak {scan['peak_mib']:.0f} MiB): "
                f"{scan['seconds'] / parse['seconds']:.1f}x the parse time; {scan['found']}"
            )
            path.unlink()


if __name__ == "__main__":
    main()
