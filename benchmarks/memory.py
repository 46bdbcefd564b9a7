"""Peak memory of `finetrace diff` and `finetrace audit --control` on a real-size pair, on the CPU.

A random-init pair shaped like Llama-3.2-1B (1.24B parameters) in float32, N = 200
texts. Each command runs in its own process, and its peak resident memory (RSS) and
anonymous memory are read from /proc while it runs. The baseline, measured in the same
run, is a process that loads one model with `from_pretrained` and runs it on one batch:
a pair that holds one model at a time should cost little more.

    python benchmarks/memory.py                   # llama-1b, N = 200 (about 15 GB of disk)
    python benchmarks/memory.py --shape tiny      # a quick check of the script itself
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from random_pair import SHAPES, random_pair

# One model, loaded and run on a batch of the corpus's first tokens, as collection runs it: the
# weights are touched (safetensors are memory-mapped, so loading alone reads next to nothing).
LOAD_ONE = """
import sys, torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
texts = open(sys.argv[2]).read().splitlines()[:32]
with torch.no_grad():
    model(**tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=9))
"""


def peak(command: list[str]) -> tuple[float, float, float]:
    """Seconds, peak RSS and peak anonymous RSS (GiB) of `command`, run in its own process.

    Both are read from /proc every 20 ms: the peak RSS as the kernel's high-water mark (VmHWM;
    `ru_maxrss` would count the parent's RSS at the fork), the anonymous part as the largest
    sample. RSS counts the pages of the memory-mapped safetensors files a process reads, which
    are the page cache's: the kernel takes them back under pressure. The anonymous part is the
    memory the process itself holds."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    high_water = anonymous = 0
    while process.poll() is None:
        status = _status(process.pid)
        high_water = max(high_water, status.get("VmHWM", 0))
        anonymous = max(anonymous, status.get("RssAnon", 0))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()[-2000:]}")
    return seconds, high_water / 2**20, anonymous / 2**20  # /proc reports KiB


def _status(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # it has just exited
        return {}
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.endswith(" kB")}


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
        "one model, one batch": [sys.executable, "-c", LOAD_ONE, str(paths["base"]), str(paths["corpus"])],
        "finetrace diff": [finetrace, "diff", *pair, *common, "--out", str(args.work / "diff"), "--dtype", "float32"],
        "finetrace audit --control": [
            *(finetrace, "audit", *pair, *common, "--control", str(paths["control"]), "--data", str(paths["data"])),
            "--no-behaviour",  # its sampling over the 128k vocabulary takes hours on a CPU at this size
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
