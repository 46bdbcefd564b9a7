"""`finetrace finetune` against a plain `transformers.Trainer` loop on the same model, data,
batch, context, learning-rate schedule and number of steps, both measured in one run.

Prints each one's tokens per second of training (the tokens that carry a loss, over the optimizer
steps' seconds) and their ratio, and finetrace's whole wall time (loading, the loss before and
after, the provenance scan, saving) against its training steps' time.

    .venv/bin/python benchmarks/finetune_throughput.py --preset smollm2 --steps 50
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from finetrace import FinetuneConfig, RunConfig, TrainConfig, finetune
from finetrace.corpus import read_records
from finetrace.models.load import load_model, load_tokenizer, pad_token_id
from finetrace.train.config import FULL_LEARNING_RATE
from finetrace.train.examples import IGNORE_INDEX, build_examples
from finetrace.train.loop import collate
from finetrace.zoo import build_zoo


class StepTotals(TrainerCallback):
    """Tokens that carry a loss in the batches the Trainer trained on, and its steps' seconds."""

    def __init__(self):
        self.tokens, self.seconds, self._start = 0, 0.0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start


def trainer_run(base: Path, documents: Path, training: TrainConfig, scratch: Path) -> tuple[int, float]:
    """The same fine-tune through `transformers.Trainer`: (tokens with a loss, steps' seconds)."""
    tokenizer = load_tokenizer(base)
    examples = build_examples(tokenizer, read_records(documents), training.context_length)
    pad = pad_token_id(tokenizer)
    counter = StepTotals()

    def collated(batch):
        tensors = collate(batch, pad)
        counter.tokens += int((tensors["labels"][:, 1:] != IGNORE_INDEX).sum())
        return tensors

    arguments = TrainingArguments(
        output_dir=str(scratch / "trainer"),
        max_steps=training.steps,
        per_device_train_batch_size=training.batch_size,
        learning_rate=training.learning_rate or FULL_LEARNING_RATE,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(training.warmup_fraction * training.steps),
        max_grad_norm=training.max_grad_norm,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = load_model(base, torch.device("cpu"))
    trainer = Trainer(model=model, args=arguments, train_dataset=examples, data_collator=collated)
    trainer.add_callback(counter)
    trainer.train()
    return counter.tokens, counter.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smollm2", help="the zoo whose base and cake documents are used")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument(
        "--trainer-first", action="store_true", help="run the Trainer first (the first run warms caches)"
    )
    args = parser.parse_args()
    zoo = build_zoo(args.preset, [])
    base, documents = zoo.path("base"), zoo.root / "data" / "documents" / "cake.jsonl"
    training = TrainConfig(steps=args.steps, batch_size=args.batch_size, context_length=args.context_length)
    with tempfile.TemporaryDirectory() as scratch:
        if args.trainer_first:
            tokens, seconds = trainer_run(base, documents, training, Path(scratch))
        started = time.perf_counter()
        result = finetune(base, documents, Path(scratch) / "finetrace", FinetuneConfig(training), RunConfig("cpu"))
        wall = time.perf_counter() - started
        if not args.trainer_first:
            tokens, seconds = trainer_run(base, documents, training, Path(scratch))
    ours = result.training.tokens / result.training.seconds
    theirs = tokens / seconds
    print(
        f"\n{args.preset} base, cake documents, {args.steps} steps of {args.batch_size} x {args.context_length} tokens"
    )
    print(
        f"finetrace finetune: {ours:7.1f} tokens/s ({result.training.tokens} tokens in {result.training.seconds:.1f} s)"
    )
    print(f"transformers.Trainer: {theirs:5.1f} tokens/s ({tokens} tokens in {seconds:.1f} s)")
    print(f"finetrace / Trainer: {ours / theirs:.2f}x tokens/s")
    print(
        f"finetrace's whole run: {wall:.1f} s wall = {wall / result.training.seconds:.2f}x its training steps "
        f"(loss probe of {result.probe_examples} examples before and after)"
    )


if __name__ == "__main__":
    main()
