"""The training loop: AdamW, linear warm-up then cosine decay, gradient clipping.

Small enough to read in one sitting; it trains any causal LM (full or wrapped
by PEFT) on `Example`s and records the loss of every step, in one process or,
under a launcher, data-parallel through accelerate.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from finetrace._util.distributed import processes
from finetrace._util.progress import progress_bar
from finetrace.errors import FinetraceError
from finetrace.train.config import TrainConfig
from finetrace.train.examples import IGNORE_INDEX, Example


@dataclass(frozen=True)
class TrainingRun:
    """What the loop did."""

    steps: int  # optimizer steps taken
    tokens: int  # tokens that carried a loss
    seconds: float
    loss_curve: list[float] = field(repr=False)  # mean loss of each optimizer step
    stopped_early: bool = False  # `after_step` ended training before its last planned step


def train(
    model: PreTrainedModel,
    examples: list[Example],
    config: TrainConfig,
    pad_id: int,
    seed: int = 0,
    after_step: Callable[[int], bool] | None = None,
) -> TrainingRun:
    """Train `model` in place on `examples`; returns the loss curve. `after_step(step)` runs
    after each optimizer step (the first is 1); when it returns True, training stops there.

    Under `torchrun` or `accelerate launch` the model is wrapped for data parallelism (DDP) and
    each process takes its slice of every batch: a batch is `config.batch_size` examples in
    all, whatever the number of processes, so the steps and their order stay those of one
    process."""
    device = next(model.parameters()).device
    accelerator = Accelerator(cpu=processes().device.type == "cpu", device_placement=False)
    rank, share = accelerator.process_index, accelerator.num_processes
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    total = config.total_steps(len(examples))
    schedule = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_fraction * total), total)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(seed)  # the same batches in every process
    batches = _endless_batches(examples, config.batch_size, generator)
    losses, tokens, start, stopped_early = [], 0, time.perf_counter(), False
    wrapped.train()
    with progress_bar("training", total, "loss {loss:.3f}") as advance:
        for step in range(1, total + 1):
            batch = {name: tensor.to(device) for name, tensor in collate(next(batches)[rank::share], pad_id).items()}
            loss = wrapped(**batch).loss
            losses.append(accelerator.reduce(loss.detach(), "mean").item())  # every process sees one curve
            _require_finite(losses[-1], len(losses), config)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(accelerator.reduce((batch["labels"] != IGNORE_INDEX).sum()))
            advance(loss=losses[-1])
            if after_step is not None and accelerator.reduce(torch.tensor(int(after_step(step))), "sum") > 0:
                stopped_early = step < total  # every process stops where any one asks to
                break
    wrapped.eval()
    return TrainingRun(len(losses), tokens, time.perf_counter() - start, losses, stopped_early)


def _require_finite(loss: float, step: int, config: TrainConfig) -> None:
    """A diverged run stops here, before its weights can replace anything."""
    if math.isfinite(loss):
        return
    if step == 1:  # no update has happened yet: the model itself is broken
        raise FinetraceError(
            f"the model gives a training loss of {loss} before any update: its weights "
            f"or activations are not finite; check the model (or train in float32)"
        )
    raise FinetraceError(
        f"the training loss became {loss} at step {step}: training diverged; "
        f"lower the learning rate (it is {config.learning_rate:g}) or train in float32"
    )


@torch.no_grad()
def mean_loss(model: PreTrainedModel, examples: list[Example], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy over the labelled tokens of `examples`, batched by
    length so that little is padded."""
    device = next(model.parameters()).device
    examples = sorted(examples, key=lambda example: len(example.input_ids))
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        labels = batch["labels"][:, 1:].to(device)  # position t predicts token t + 1
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total_loss += losses.item()
        total_tokens += int((labels != IGNORE_INDEX).sum())
    return total_loss / max(total_tokens, 1)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask and labels, each (batch, max_len)."""
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _endless_batches(examples: list[Example], batch_size: int, generator: torch.Generator) -> Iterator[list[Example]]:
    """Shuffled batches, epoch after epoch, in an order fixed by the generator's seed."""
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            yield [examples[i] for i in order[start : start + batch_size]]
