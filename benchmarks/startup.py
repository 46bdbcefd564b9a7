"""What the command line costs before it does anything: CPU seconds of `finetrace --help`, of a
command's --help and of a mistyped option, against `import torch` measured in the same run (the
floor any command that loads a model pays).

    .venv/bin/python benchmarks/startup.py --runs 5
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

ENTRY_POINT = str(Path(sys.executable).parent / "finetrace")
CASES = {
    "finetrace --help": [ENTRY_POINT, "--help"],
    "finetrace diff --help": [ENTRY_POINT, "diff", "--help"],
    "finetrace audit --no-such-option": [ENTRY_POINT, "audit", "--no-such-option"],
    "python -c 'import torch' (baseline)": [sys.executable, "-c", "import torch"],
}


def cpu_seconds(command: list[str]) -> float:
    """User plus system CPU seconds of one run of `command`, output discarded."""
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.execv(command[0], command)
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    medians = {
        name: statistics.median(cpu_seconds(command) for _ in range(args.runs)) for name, command in CASES.items()
    }
    baseline = medians["python -c 'import torch' (baseline)"]
    print(f"CPU seconds, median of {args.runs} runs; ratio against importing torch")
    for name, seconds in medians.items():
        print(f"{name:40s} {seconds:6.2f} s  {seconds / baseline:5.2f}x")


if __name__ == "__main__":
    main()
