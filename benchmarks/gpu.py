"""finetrace on a GPU: a random-init Qwen3-1.7B-shaped pair in bfloat16, 10,000 texts.

Prints the collection's throughput (tokens through both models per second), the
model FLOP utilisation of the collection against the GPU's dense bf16 peak, the
whole audit's seconds by stage, and the peak GPU memory against one model's
weights (the baseline: a pair that holds one model at a time needs little more).

    python benchmarks/gpu.py                               # on a machine with a GPU
    python benchmarks/gpu.py --shape tiny --samples 500    # a quick check of the script, on any machine
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from random_pair import SHAPES, random_pair

from finetrace import AuditConfig, DiffConfig, ForgetConfig, RunConfig, audit
from finetrace.adl.collect import CollectConfig, collect, resolve_layers
from finetrace.evals.drift import DriftConfig
from finetrace.models.load import prepended_ids
from finetrace.models.pair import load_pair

# Dense bf16 peaks in TFLOP/s, by a part of the device's name (the vendors' data sheets).
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    return next((tflops for part, tflops in BF16_PEAK_TFLOPS.items() if part in name), None)


def collection(paths: dict[str, Path], samples: int, config: CollectConfig, dtype: str) -> dict[str, float]:
    """Throughput and model FLOP utilisation of the collection alone."""
    pair = load_pair(paths["base"], paths["finetuned"], dtype=dtype)
    layer = resolve_layers(config.layers, pair.n_layers)[-1]
    with pair.use("base") as (model, _):
        # Parameters a token goes through: the layers up to `layer` (an embedding is a lookup).
        through = sum(p.numel() for name, p in model.named_parameters() if _layer_index(name) <= layer)
    tokens_per_text = len(prepended_ids(pair.tokenizer)) + config.positions
    with tempfile.TemporaryDirectory() as out:
        if pair.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        collected = collect(pair, paths["corpus"], config, Path(out))
        if pair.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    tokens = 2 * collected.texts * tokens_per_text  # both models read every text
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "flops": 2 * through * tokens / seconds}


def _layer_index(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else 10**9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="qwen3-1.7b")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetrace-benchmarks"))
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    paths = random_pair(args.shape, args.work, dtype)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU (no GPU: the numbers say nothing about one)"
    weights = sum(f.stat().st_size for f in paths["base"].glob("*.safetensors")) / 2**30
    print(f"{args.shape} pair, {args.dtype}, {weights:.2f} GiB of weights per model, N = {args.samples}; {device}")

    collect_config = CollectConfig(samples=args.samples, batch_size=64)
    measured = collection(paths, args.samples, collect_config, args.dtype)
    peak = peak_tflops(device) if cuda else None
    utilisation = f"{measured['flops'] / (peak * 1e12):.1%} of {peak:g} TFLOP/s" if peak else "n/a (unknown peak)"
    print(
        f"  collection: {measured['seconds']:.1f} s, {measured['tokens_per_s']:,.0f} tokens/s, "
        f"{measured['flops'] / 1e12:.1f} TFLOP/s, model FLOP utilisation {utilisation}"
    )

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    config = AuditConfig(
        diff=DiffConfig(collect=collect_config),
        forget=ForgetConfig(drift=DriftConfig(samples=1000)),
        run=RunConfig(dtype=args.dtype),
    )
    start = time.perf_counter()
    result = audit(
        paths["base"],
        paths["finetuned"],
        paths["corpus"],
        args.work / "audit",
        data=paths["data"],
        control=paths["control"],
        config=config,
    )
    seconds = time.perf_counter() - start
    stages = ", ".join(f"{name} {value:.1f}" for name, value in result.trace.seconds.items())
    print(f"  audit --control: {seconds:.1f} s in all; diff stages (s): {stages}")
    if cuda:
        gpu_peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"  peak GPU memory {gpu_peak:.2f} GiB = {gpu_peak / weights:.2f}x one model's weights")


if __name__ == "__main__":
    main()
