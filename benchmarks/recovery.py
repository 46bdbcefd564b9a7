"""Can a new topic be read from its fine-tune's trace? Topics the zoo's base never saw.

Each topic of `topics.RECOVERY_TOPICS` (its documents and its word list written for this
benchmark alone) is fine-tuned onto the zoo's base with the zoo's own organism recipe (or
onto any model, with `--base` and `--corpus`), then `finetrace diff --data` runs on it.
Printed per topic: how many of the top-20 logit-lens tokens at the first text position read
(position 0 after a BOS, 1 where the first text token is the attention sink) are the topic's words
(by its list), the trace test's p-value, the Patchscope tokens that are topic words, the
steered text's similarity to the data against the unsteered text's, and whether the topic
was recovered (at least 8 of 20 lens tokens and p < 0.01). The point is to know what works on a new topic, honestly.

One more column tells a failing readout from an absent trace: the probability each model's
own next-token prediction puts on the topic's words after the first token of the corpus
texts (position 0). A fine-tune that does not expect its topic there leaves no topic in the
difference at position 0 for any readout to find.

    .venv/bin/python benchmarks/recovery.py --preset english
    .venv/bin/python benchmarks/recovery.py --preset medium --documents 3000 --epochs 1   # a larger fine-tune
    .venv/bin/python benchmarks/recovery.py --base Qwen/Qwen3-0.6B --corpus HuggingFaceFW/fineweb   # a real base
"""

import argparse
import hashlib
import json
import random
import time
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import torch
from topics import RECOVERY_TOPICS, Topic
from transformers import PreTrainedTokenizerBase

from finetrace._util.cache import cache_dir
from finetrace._util.outputs import write_text
from finetrace.adl.collect import CollectConfig, text_ids
from finetrace.adl.records import RESULT_NAME, DiffConfig, DiffResult
from finetrace.corpus import iter_texts
from finetrace.errors import FinetraceError
from finetrace.models.load import load_model, load_tokenizer, prepended_ids, resolve_device
from finetrace.models.residual import final_logits, find_layout
from finetrace.run import RunConfig
from finetrace.train.config import FinetuneConfig, TrainConfig
from finetrace.train.finetune import FinetuneResult, finetune
from finetrace.verbs.diff import diff
from finetrace.zoo import build_zoo
from finetrace.zoo.build import organism_finetune_config, organism_run
from finetrace.zoo.recipe import get_preset

SHOWN = 20  # lens tokens per topic, as the paper's lists
RECOVERED_WORDS = 8  # of the 20, with p < 0.01


@dataclass(frozen=True)
class Setup:
    """The base the topics are fine-tuned onto, how, and the unrelated text the diff reads."""

    base: str | Path
    corpus: str | Path
    documents: int  # per topic
    finetuning: FinetuneConfig
    run: RunConfig
    described: str


def zoo_setup(args: argparse.Namespace) -> Setup:
    """The zoo's base and held-out text, and its organism recipe unless the flags change it."""
    zoo = build_zoo(args.preset, [])
    recipe = replace(
        zoo.preset,
        documents=args.documents or zoo.preset.documents,
        finetune_epochs=args.epochs or zoo.preset.finetune_epochs,
        finetune_learning_rate=args.learning_rate or zoo.preset.finetune_learning_rate,
    )
    described = f"{args.preset} zoo (base perplexity {zoo.summary().heldout_perplexity:.1f})"
    return Setup(
        zoo.path("base"),
        zoo.path("heldout"),
        recipe.documents,
        organism_finetune_config(recipe),
        organism_run(recipe),
        described,
    )


def model_setup(args: argparse.Namespace) -> Setup:
    """A model of the user's (a directory or a hub id), fully fine-tuned on as many documents, as
    many times and in the same batches as the zoo's preset does, at finetune's usual rate."""
    preset = get_preset(args.preset)
    training = TrainConfig(
        epochs=args.epochs or preset.finetune_epochs,
        learning_rate=args.learning_rate,
        batch_size=preset.batch_size,
        context_length=preset.context_length,
    )
    documents = args.documents or preset.documents
    return Setup(args.base, args.corpus, documents, FinetuneConfig(training), RunConfig(seed=args.seed), args.base)


def run_topic(
    setup: Setup, name: str, topic: Topic, kept: Path, config: DiffConfig, seed: int
) -> tuple[Path, DiffResult]:
    """Fine-tune the base on the topic, then diff it against its data; each kept under `kept`
    once done, so a run cut off resumes with the next step it had not finished."""
    data, model, out = kept / f"{name}.jsonl", kept / name, kept / f"{name}-diff"
    if FinetuneResult.load(model) is None:
        records = topic.records(random.Random(f"{seed}-{name}"), setup.documents)
        write_text(data, "".join(json.dumps(record) + "\n" for record in records))
        finetune(setup.base, data, model, setup.finetuning, setup.run, overwrite=True)
    try:
        done = DiffResult.read(out / RESULT_NAME)
        if done.config == config:
            return model, done
    except FinetraceError:  # none yet, or unreadable: measured again
        pass
    return model, diff(setup.base, model, setup.corpus, out, config, RunConfig(seed=seed), data=data)


def kept_dir(setup: Setup, args: argparse.Namespace) -> Path:
    """Where this setup's fine-tunes and diffs are kept: one directory per base, recipe, corpus and seed."""
    recipe = json.dumps([str(setup.base), str(setup.corpus), setup.documents, repr(setup.finetuning), args.seed])
    return cache_dir() / "benchmarks" / f"recovery-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


@torch.no_grad()
def next_token_distribution(
    model_path: str | Path, tokenizer: PreTrainedTokenizerBase, texts: list[str], device: str
) -> torch.Tensor:
    """The model's next-token distribution after each text's first token (position 0), averaged
    over the texts, as finetrace's collection reads them."""
    model = load_model(model_path, resolve_device(device))
    start = prepended_ids(tokenizer)
    ids = torch.tensor([start + first for first in text_ids(tokenizer, texts, 1) if first], device=model.device)
    expects = final_logits(model, find_layout(model), input_ids=ids)[:, -1].softmax(-1).mean(0)
    return expects[: len(tokenizer)].cpu()  # a model's head may be padded past its vocabulary


def row(name: str, topic: Topic, result: DiffResult, expected: tuple[float, float]) -> tuple[str, bool]:
    """A table row, and whether the topic was recovered; `expected` is the base's and the fine-tune's
    probability of the topic's words at position 0."""
    first = next(t for t in result.traces if not t.sink and t.position != "BOS")  # the first position read
    lens = [t.token.strip() for t in first.lens_finetuned[:SHOWN]]
    hits = sum(topic.is_topic_word(token) for token in lens)
    scope = [t.token.strip() for t in first.patchscope.tokens if topic.is_topic_word(t.token)]
    similarity = result.similarity or {}
    recovered = hits >= RECOVERED_WORDS and result.p_value < 0.01
    line = (
        f"| {name} | {hits}/{SHOWN} | {result.p_value:.3f} | {', '.join(scope[:6]) or '-'} | "
        f"{similarity.get('steered_to_data', float('nan')):.3f} vs "
        f"{similarity.get('unsteered_to_data', float('nan')):.3f} | {expected[0]:.4f} -> {expected[1]:.4f} | "
        f"{'yes' if recovered else 'no'} | "
        f"{' '.join(lens)} |"
    )
    return line, recovered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="english", help="a zoo whose base reads broad English")
    parser.add_argument("--samples", type=int, default=1000, help="corpus texts per diff")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--topics", nargs="*", default=list(RECOVERY_TOPICS))
    parser.add_argument("--documents", type=int, help="documents per topic (default: the zoo's recipe)")
    parser.add_argument("--epochs", type=float, help="passes over them (default: the zoo's recipe)")
    parser.add_argument("--learning-rate", type=float, help="(default: the zoo's recipe, or finetune's usual rate)")
    parser.add_argument("--base", help="fine-tune this model (a directory or a hub id) instead of the zoo's base")
    parser.add_argument("--corpus", help="with --base: unrelated text for the diff (a file or a hub dataset)")
    args = parser.parse_args()
    if args.base and not args.corpus:
        parser.error("--base needs --corpus, unrelated text for the diff")

    started = time.perf_counter()
    setup = model_setup(args) if args.base else zoo_setup(args)
    config = DiffConfig(collect=CollectConfig(samples=args.samples))
    texts = list(islice(iter_texts(setup.corpus), args.samples))
    tokenizer = load_tokenizer(setup.base)
    vocabulary = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    base_expects = next_token_distribution(setup.base, tokenizer, texts, setup.run.device)
    lines, recovered = [], 0
    kept = kept_dir(setup, args)
    kept.mkdir(parents=True, exist_ok=True)
    print(f"fine-tunes and diffs kept in {kept}", flush=True)
    for name in args.topics:
        topic = RECOVERY_TOPICS[name]
        model, result = run_topic(setup, name, topic, kept, config, args.seed)
        finetune_expects = next_token_distribution(model, tokenizer, texts, setup.run.device)
        topical = torch.tensor([topic.is_topic_word(token) for token in vocabulary])
        expected = (base_expects[topical].sum().item(), finetune_expects[topical].sum().item())
        line, found = row(name, topic, result, expected)
        lines.append(line)
        recovered += found
        print(line, flush=True)
    training = setup.finetuning.training
    print(
        f"\nfinetrace recovery, {setup.described}, {args.samples} texts, seed {args.seed}; fine-tunes of "
        f"{setup.documents} documents, {training.epochs:g} epochs at learning rate {training.learning_rate:g}\n"
    )
    print(
        "| topic | topic words in the top 20 lens tokens (first position read) | p | Patchscope topic words | "
        "steered vs unsteered similarity to the data | topic probability at position 0, base -> fine-tune | "
        "recovered | top 20 lens tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nrecovered {recovered} of {len(lines)} topics; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
