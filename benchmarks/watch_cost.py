"""What the cheap audit costs next to the training it watches, both measured in one run.

Fine-tunes the small zoo's base on the cake documents with `transformers.Trainer` and the
zoo's own recipe (learning rate, batch, context, schedule; `--steps`, default its 3 epochs),
running `FinetraceCallback` with its default budget every `--every` steps (default: its own
default) and once more at the end. Prints, for each evaluation, the seconds of the cheap audit
and of the training steps since the one before (forward, backward and optimizer; checkpoint
saving left out), and their ratio; what one audit costs in training steps; and the cost of
reading the base, paid once. With `--save`, a checkpoint is saved at every audit, under --out,
for `finetrace watch`.

    python benchmarks/watch_cost.py --steps 200            # the default interval, 50 steps
    python benchmarks/watch_cost.py --every 10 --save --out /tmp/cake-run   # six checkpoints
"""

import argparse
import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from finetrace.corpus import read_records
from finetrace.integrations import DEFAULT_EVERY, FinetraceCallback
from finetrace.models.load import load_model, load_tokenizer, pad_token_id
from finetrace.train.examples import build_examples
from finetrace.train.loop import collate
from finetrace.zoo import Zoo, open_zoo
from finetrace.zoo.recipe import get_preset

BUDGET = 0.10  # one evaluation may cost at most this share of the training between two


class StepClock(TrainerCallback):
    """Seconds of each optimizer step, from its start to its end (before any later callback's
    `on_step_end`, such as the audit, when added first)."""

    def __init__(self):
        self.seconds: dict[int, float] = {}
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds[state.global_step] = time.perf_counter() - self._start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--zoo-root", type=Path, help="a built zoo's directory (default: the preset's cached zoo)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's epochs)")
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY, help="steps between two audits")
    parser.add_argument("--save", action="store_true", help="save a checkpoint at every audit")
    parser.add_argument("--out", type=Path, default=Path("watch-cost"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    recipe = get_preset(args.preset)
    zoo = Zoo(args.zoo_root, recipe) if args.zoo_root else open_zoo(args.preset)
    base, documents = zoo.path("base"), zoo.root / "data" / "documents" / "cake.jsonl"
    tokenizer = load_tokenizer(base)
    examples = build_examples(tokenizer, read_records(documents), recipe.context_length)
    steps = args.steps or math.ceil(recipe.finetune_epochs * len(examples) / recipe.batch_size)
    every = args.every
    training = TrainingArguments(
        output_dir=str(args.out),
        max_steps=steps,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.finetune_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.05 * steps),  # the zoo's warm-up fraction
        save_strategy="steps" if args.save else "no",
        save_steps=every,
        logging_steps=every,
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
    )
    pad = pad_token_id(tokenizer)
    trainer = Trainer(
        model=load_model(base, torch.device("cpu")),
        args=training,
        train_dataset=examples,
        data_collator=lambda batch: collate(batch, pad),
        processing_class=tokenizer,
    )
    clock = StepClock()
    trainer.add_callback(clock)  # first: its step ends before the audit starts
    watcher = FinetraceCallback(
        trainer, corpus=zoo.path("heldout"), facts=zoo.path("facts"), data=documents, every=every
    )
    trainer.add_callback(watcher)
    trainer.train()

    print(f"\n{args.preset} zoo, cake, {steps} steps of {recipe.batch_size}, an audit every {every} steps")
    print(f"reading the base once: {watcher.reference.seconds:.2f} s")
    print(f"{'step':>5} {'training s':>10} {'audit s':>8} {'ratio':>6}  trace strength, facts lost, NLL change")
    previous, ratios, step_seconds = 0, [], sum(clock.seconds.values()) / len(clock.seconds)
    for point in watcher.points:
        trained = sum(clock.seconds[step] for step in range(previous + 1, point.step + 1))
        c = point.checkup
        regular = point.step % every == 0  # the audit at the end of training comes sooner
        if regular:
            ratios.append(c.seconds / trained)
        print(
            f"{point.step:>5} {trained:>10.2f} {c.seconds:>8.2f} {c.seconds / trained:>6.1%}  "
            f"{c.trace_strength:+.3f}, {c.lost_facts}/{c.known_facts}, {c.nll_change:+.3f}"
            + ("" if regular else "  (the end of training)")
        )
        previous = point.step
    audit_seconds = sum(p.checkup.seconds for p in watcher.points) / len(watcher.points)
    print(
        f"one audit: {audit_seconds:.2f} s = {audit_seconds / step_seconds:.1f} training steps of {step_seconds:.3f} s"
    )
    if ratios:
        verdict = "within" if max(ratios) < BUDGET else "over"
        print(f"every {every} steps: largest ratio {max(ratios):.1%}, {verdict} the {BUDGET:.0%} budget")
    if args.save:
        print(f"checkpoints: {args.out}")


if __name__ == "__main__":
    main()
