"""A `transformers.Trainer` that fine-tunes the tiny zoo's base on the cake documents, for the
watch and callback tests: a few optimizer steps, seeded, on the CPU."""

from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from finetrace.corpus import read_records
from finetrace.models.load import load_model, load_tokenizer, pad_token_id
from finetrace.train.examples import build_examples
from finetrace.train.loop import collate

LEARNING_RATE = 1e-3  # the tiny zoo's own fine-tuning rate
BATCH_SIZE, CONTEXT = 16, 128


def cake_trainer(zoo, out: Path, steps: int, save_steps: int | None = None, seed: int = 0) -> Trainer:
    """A Trainer over the cake documents that runs `steps` steps and saves every `save_steps`."""
    base = zoo.path("base")
    tokenizer = load_tokenizer(base)
    examples = build_examples(tokenizer, read_records(zoo.organism("cake").documents), CONTEXT)
    pad = pad_token_id(tokenizer)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 1,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
    )
    return Trainer(
        model=load_model(base, torch.device("cpu")),
        args=args,
        train_dataset=examples,
        data_collator=lambda batch: collate(batch, pad),
        processing_class=tokenizer,
    )
