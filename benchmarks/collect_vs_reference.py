"""Mean activation differences two ways, on the same pair and the same texts, in one run.

reference: full 128-token sequences through both models, every activation kept
           in memory, then averaged (the ADL reference code's way);
finetrace: `finetrace.adl.collect`: the first k tokens only, the forward pass
           stopped after layer L, float64 running sums.

Each method runs in its own child process so that its peak memory (max RSS) is
its own. Prints both wall times, the speed-up, both peaks and the largest
difference between the two results.

    python benchmarks/collect_vs_reference.py --preset small --samples 10000
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REFERENCE_LENGTH = 128  # tokens per text in the reference code
MIN_TEXT_CHARS = 700  # texts long enough to fill REFERENCE_LENGTH tokens


def benchmark_corpus(heldout: Path, samples: int, out: Path) -> Path:
    """`samples` texts of several held-out paragraphs each (paragraphs reused as needed)."""
    paragraphs = heldout.read_text().splitlines()
    rng = random.Random(0)
    texts = []
    for _ in range(samples):
        text = ""
        while len(text) < MIN_TEXT_CHARS:
            text += rng.choice(paragraphs) + " "
        texts.append(text.strip())
    out.write_text("\n".join(texts) + "\n")
    return out


def run_reference(
    base: str, finetuned: str, corpus: Path, layer_fraction: float, positions: int, batch_size: int
) -> torch.Tensor:
    from finetrace.adl.collect import resolve_layers
    from finetrace.models.load import prepended_ids
    from finetrace.models.pair import load_pair

    pair = load_pair(base, finetuned, device="cpu")
    layer = resolve_layers((layer_fraction,), pair.n_layers)[0]
    texts = corpus.read_text().splitlines()
    kept = {"base": [], "finetuned": []}
    for which in kept:
        for start in range(0, len(texts), batch_size):
            encoded = pair.tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=REFERENCE_LENGTH,
                padding="max_length",
                return_tensors="pt",
            )
            with pair.use(which) as (model, _), torch.no_grad():
                states = model(**encoded, output_hidden_states=True).hidden_states
            kept[which].append(states[layer + 1])  # every activation of every text, (B, 128, d)
    base_all, finetuned_all = torch.cat(kept["base"]), torch.cat(kept["finetuned"])
    collected = len(prepended_ids(pair.tokenizer)) + positions  # the BOS, where there is one, and k text positions
    return (finetuned_all - base_all)[:, :collected].double().mean(0)


def run_finetrace(
    base: str, finetuned: str, corpus: Path, layer_fraction: float, positions: int, batch_size: int
) -> torch.Tensor:
    from finetrace.adl.collect import CollectConfig, collect
    from finetrace.models.pair import load_pair

    pair = load_pair(base, finetuned, device="cpu")
    config = CollectConfig(
        layers=(layer_fraction,), positions=positions, samples=10**9, batch_size=batch_size, checkpoint_every=10**9
    )
    with tempfile.TemporaryDirectory() as out:
        return collect(pair, corpus, config, Path(out)).mean_delta[0]


METHODS = {"reference": run_reference, "finetrace": run_finetrace}


def child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    mean = METHODS[args.method](args.base, args.finetuned, args.corpus, args.layer, args.positions, args.batch_size)
    seconds = time.perf_counter() - start
    torch.save(mean, args.result)
    print(json.dumps({"seconds": seconds, "peak_mib": high_water_mib()}))


def high_water_mib() -> float:
    """This process's peak RSS (VmHWM); `ru_maxrss` would count the parent's RSS at the fork."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # KiB


def measure(method: str, args: argparse.Namespace, corpus: Path, result: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--base",
        args.base,
        "--finetuned",
        args.finetuned,
        "--corpus",
        str(corpus),
        "--result",
        str(result),
        "--layer",
        str(args.layer),
        "--positions",
        str(args.positions),
        "--batch-size",
        str(args.batch_size),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="zoo preset whose base and organism are compared")
    parser.add_argument("--organism", default="cake")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--layer", type=float, default=0.5)
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", choices=list(METHODS), help="run one method (e.g. to compare peaks over N)")
    parser.add_argument("--child", choices=list(METHODS), dest="method", help=argparse.SUPPRESS)
    parser.add_argument("--base", help="base model directory [default: the zoo's base]")
    parser.add_argument("--finetuned", help="fine-tuned model directory [default: the zoo organism]")
    parser.add_argument("--heldout", type=Path, help="text file of paragraphs [default: the zoo's held-out text]")
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        return child(args)

    if not (args.base and args.finetuned and args.heldout):
        from finetrace.zoo import build_zoo

        zoo = build_zoo(args.preset)
        args.base, args.finetuned = str(zoo.path("base")), str(zoo.path(args.organism))
        args.heldout = zoo.path("heldout")
    with tempfile.TemporaryDirectory() as scratch:
        corpus = benchmark_corpus(args.heldout, args.samples, Path(scratch) / "corpus.txt")
        methods = [args.only] if args.only else list(METHODS)
        runs = {m: measure(m, args, corpus, Path(scratch) / f"{m}.pt") for m in methods}
        means = {m: torch.load(Path(scratch) / f"{m}.pt", weights_only=True) for m in methods}
    print(f"{args.finetuned} vs {args.base}: N = {args.samples}, layer {args.layer}, k = {args.positions}")
    for method, run in runs.items():
        print(f"  {method:9s}  {run['seconds']:8.1f} s   peak {run['peak_mib']:8.0f} MiB")
    if len(runs) == 2:
        speedup = runs["reference"]["seconds"] / runs["finetrace"]["seconds"]
        memory = runs["reference"]["peak_mib"] / runs["finetrace"]["peak_mib"]
        difference = (means["reference"] - means["finetrace"]).abs().max().item()
        scale = means["reference"].abs().max().item()  # float32 rounds relative to the largest values
        print(
            f"  speed-up {speedup:.1f}x, peak memory ratio {memory:.1f}x, max |difference of means| "
            f"{difference:.2e} ({difference / scale:.1e} of the largest |mean|, {scale:.3g})"
        )


if __name__ == "__main__":
    main()
