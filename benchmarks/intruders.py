"""Do the weights predict the forgetting? Intruder dimensions of every zoo organism beside the
facts it lost.

Per organism: `finetrace weights` against the model it was fine-tuned from (intruder
dimensions by the published criterion: of each matrix's 10 leading singular vectors, those
whose largest |cosine| with any of the base's is below 0.5; the mean relative change), and
the real facts it lost from `benchmarks/damage.py`'s records (run that first: its
`forget.json` per organism is read, nothing is measured twice). Then Spearman's rank
correlation of the intruders, and of the mean relative change, with the share of facts lost,
with a permutation p-value.

    .venv/bin/python benchmarks/intruders.py --preset smollm2
"""

import argparse
import time

import torch
from damage import damage_dir

from finetrace.errors import FinetraceError
from finetrace.evals.records import RESULT_NAME as FORGET_NAME
from finetrace.evals.records import ForgetResult
from finetrace.spectra.records import RESULT_NAME, WeightsResult
from finetrace.verbs.weights import weights
from finetrace.zoo import ORGANISMS, build_zoo
from finetrace.zoo.build import parent_of

PERMUTATIONS = 100_000


def ranks(values: list[float]) -> torch.Tensor:
    """Ranks from 1, ties given their mean rank."""
    x = torch.tensor(values, dtype=torch.float64)
    order = x.argsort()
    ranked = torch.empty_like(x)
    ranked[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for value in x.unique():
        tied = x == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float]:
    """Spearman's rho and its two-sided permutation p-value."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    rho = ((ra * rb).sum() / (ra.norm() * rb.norm())).item()
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.stack([rb[torch.randperm(len(rb), generator=generator)] for _ in range(PERMUTATIONS)])
    null = (shuffled @ ra) / (ra.norm() * rb.norm())
    return rho, ((null.abs() >= abs(rho) - 1e-12).sum().item() + 1) / (PERMUTATIONS + 1)


def correlation(a: list[float], b: list[float]) -> str:
    if len(set(a)) == 1 or len(set(b)) == 1:
        return "undefined: every organism has the same value"
    rho, p = spearman(a, b)
    return f"{rho:+.2f} (permutation p = {p:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2")
    args = parser.parse_args()
    started = time.perf_counter()
    zoo = build_zoo(args.preset)
    out = damage_dir(zoo)
    print("| organism | kind | LoRA | intruders | mean relative change | facts lost / known | lost share |")
    print("|---|---|---|---|---|---|---|")
    pairs = []
    for name in zoo.organisms:
        organism = ORGANISMS[name]
        record = out / name / "weights"
        try:
            spectra = WeightsResult.read(record / RESULT_NAME)
        except FinetraceError:  # none yet, or unreadable: measured again
            spectra = weights(zoo.path(parent_of(zoo.preset, organism)), zoo.path(name), record)
        try:
            flips = ForgetResult.read(out / name / FORGET_NAME).flips
            lost = f"{flips.lost} / {flips.known_before} | {flips.lost_fraction:.1%}"
            pairs.append((spectra.intruders, spectra.mean_relative_change, flips.lost_fraction))
        except FinetraceError:
            lost = "- | -"
        print(
            f"| {name} | {organism.kind} | {'yes' if organism.lora else 'no'} | {spectra.intruders} | "
            f"{spectra.mean_relative_change:.4f} | {lost} |",
            flush=True,
        )
    if len(pairs) >= 3:
        intruders, changes, lost = zip(*pairs, strict=True)
        for measure, values in (("intruders", intruders), ("the mean relative change", changes)):
            print(
                f"Spearman's rho, {measure} vs the share of facts lost (n = {len(lost)}): {correlation(values, lost)}"
            )
    print(f"{args.preset} zoo, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
