"""Steering two ways on the same fine-tune, direction, prompts and strengths, in one run; and
a whole `diff`'s seconds per stage.

reference: one `generate` per prompt and strength, then one forward pass per generation to
           score its likelihood (the way steering is usually written, and finetrace's before);
finetrace: `finetrace.adl.steer`: every prompt and sample of a strength in one left-padded
           `generate`, scored in one batch per prompt.

Prints the diff's stages, the work after the collection against the collection, both
steering wall times and the speed-up. Past the held-out text's size, the corpus is texts of
several held-out paragraphs.

    python benchmarks/steer_vs_reference.py --preset small --samples 1000
    python benchmarks/steer_vs_reference.py --preset small --samples 10000
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from collect_vs_reference import benchmark_corpus

from finetrace import DiffConfig, diff
from finetrace.adl.collect import CollectConfig
from finetrace.adl.steer import SteerConfig, distinct_bigrams, prompt_texts, steer
from finetrace.models.likelihood import text_logprobs
from finetrace.models.load import pad_token_id
from finetrace.models.pair import load_pair
from finetrace.models.residual import add_to_residual
from finetrace.zoo import build_zoo

AFTER_COLLECTION = ("decode", "steer")  # the null and the lens, Patchscope; steering


def reference_steer(model, layout, tokenizer, layer: int, unit: torch.Tensor, typical: float, config: SteerConfig):
    """Each prompt generated alone at each strength; each generation scored alone."""
    trials = []
    for strength in (0.0, *config.strengths):
        texts = []
        for prompt in prompt_texts(tokenizer, config):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            torch.manual_seed(0)
            with add_to_residual(layout, layer, unit * strength * typical):
                output = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=config.temperature,
                    max_new_tokens=config.max_new_tokens,
                    num_return_sequences=config.samples_per_prompt,
                    pad_token_id=pad_token_id(tokenizer),
                )
            for row in output[:, ids.shape[1] :]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                scores = text_logprobs(model, tokenizer, [(prompt, text)])
                texts.append((text, scores.logprob[0].item() / max(int(scores.tokens[0]), 1)))
        trials.append((strength, sum(distinct_bigrams(t) for t, _ in texts) / len(texts)))
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    zoo = build_zoo(args.preset, ("cake",))
    base, cake, heldout = zoo.path("base"), zoo.path("cake"), zoo.path("heldout")
    with tempfile.TemporaryDirectory() as scratch:
        corpus = heldout
        if args.samples > len(heldout.read_text().splitlines()):  # texts of several held-out paragraphs
            corpus = benchmark_corpus(heldout, args.samples, Path(scratch) / "corpus.txt")
        started = time.perf_counter()
        config = DiffConfig(collect=CollectConfig(samples=args.samples))
        result = diff(base, cake, corpus, Path(scratch) / "diff", config, data=zoo.organism("cake").documents)
        total = time.perf_counter() - started
    stages = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in result.seconds.items())
    print(f"diff, {args.preset} zoo, cake, {result.texts} texts, with data: {total:.1f} s ({stages})")
    after = sum(result.seconds[stage] for stage in AFTER_COLLECTION)
    print(
        f"after the collection ({' + '.join(AFTER_COLLECTION)}) {after:.2f} s = "
        f"{after / result.seconds['collect']:.2f}x the collection's {result.seconds['collect']:.2f} s"
    )
    similarity = result.similarity or {}
    print(
        f"steered at {result.steering.chosen_strength:g}x the typical norm (position {result.steered_position}): "
        f"similarity to the data {similarity.get('steered_to_data', float('nan')):.3f}, "
        f"unsteered {similarity.get('unsteered_to_data', float('nan')):.3f}"
    )

    pair = load_pair(base, cake, device="cpu")
    with pair.use("finetuned") as (model, layout):
        layer = result.traces[0].layer
        unit = torch.randn(pair.hidden_size, generator=torch.Generator().manual_seed(0))
        unit /= unit.norm()
        typical = result.traces[0].norm / result.traces[0].relative_norm
        timings = {}
        for name, run in (
            ("finetrace", lambda: steer(model, layout, pair.tokenizer, layer, unit, typical, config.steer)),
            ("reference", lambda: reference_steer(model, layout, pair.tokenizer, layer, unit, typical, config.steer)),
        ):
            started = time.perf_counter()
            run()
            timings[name] = time.perf_counter() - started
    prompts = len(prompt_texts(pair.tokenizer, config.steer))
    print(
        f"steering ({len(config.steer.strengths) + 1} strengths x {prompts} prompts x "
        f"{config.steer.samples_per_prompt} samples): finetrace {timings['finetrace']:.2f} s, "
        f"reference {timings['reference']:.2f} s, speed-up {timings['reference'] / timings['finetrace']:.1f}x"
    )


if __name__ == "__main__":
    main()
