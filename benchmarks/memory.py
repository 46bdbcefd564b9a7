"""Peak memory of `finetrace diff` and `finetrace audit --control` on a real-size pair, on the CPU.

A random-init pair shaped like Llama-3.2-1B (1.24B parameters) in float32, N = 200
texts. Each command runs in its own process; its peak resident memory (max RSS) is
read when it exits, and its anonymous memory is sampled while it runs. The baseline,
measured in the same run, is a process that only loads one model with
`from_pretrained`: a pair that holds one model at a time should cost little more.

    python benchmarks/memory.py                   # llama-1b, N = 200 (about 15 GB of disk)
    python benchmarks/memory.py --shape tiny      # a quick check of the script itself
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from random_pair import SHAPES, random_pair

LOAD_ONE = "import sys, transformers; transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])"


def peak(command: list[str]) -> tuple[float, float, float]:
    """Seconds, peak RSS and peak anonymous RSS (GiB) of `command`, run in its own process.

    RSS counts the pages of a memory-mapped safetensors file while it is read; those are the
    page cache's and the kernel takes them back under pressure. The anonymous part, sampled
    every 20 ms, is the memory the process itself holds."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    anonymous = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        anonymous = max(anonymous, _anonymous_kib(process.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 2**20, anonymous / 2**20  # Linux reports KiB


def _anonymous_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # exited between the two calls
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="llama-1b")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetrace-benchmarks"))
    args = parser.parse_args()

    paths = random_pair(args.shape, args.work)
    weights = sum(f.stat().st_size for f in paths["base"].glob("*.safetensors")) / 2**30
    finetrace = str(Path(sys.executable).parent / "finetrace")
    common = ["--corpus", str(paths["corpus"]), "--samples", str(args.samples), "--device", "cpu"]
    pair = [str(paths["base"]), str(paths["finetuned"])]
    runs = {
        "load one model": [sys.executable, "-c", LOAD_ONE, str(paths["base"])],
        "finetrace diff": [finetrace, "diff", *pair, *common, "--out", str(args.work / "diff"), "--dtype", "float32"],
        "finetrace audit --control": [
            *(finetrace, "audit", *pair, *common, "--control", str(paths["control"]), "--data", str(paths["data"])),
            *("--drift-samples", str(args.samples), "--out", str(args.work / "audit"), "--dtype", "float32"),
        ],
    }
    print(f"{args.shape}, float32: {weights:.2f} GiB of weights per model; N = {args.samples} texts")
    print(f"  {'':26s} {'seconds':>8s} {'RSS GiB':>8s} {'x load one':>11s} {'anonymous GiB':>14s} {'x weights':>10s}")
    baseline = None
    for name, command in runs.items():
        seconds, rss, anonymous = peak(command)
        baseline = baseline or rss
        print(
            f"  {name:26s} {seconds:8.1f} {rss:8.2f} {rss / baseline:11.2f}"
            f" {anonymous:14.2f} {anonymous / weights:10.2f}"
        )


if __name__ == "__main__":
    main()
