"""`FinetraceCallback`: the cheap audit inside `transformers.Trainer` (and TRL's `SFTTrainer`).

Every `every` optimizer steps the callback measures the model being trained as `finetrace
watch` measures a checkpoint (the trace, the facts lost, the drift), logs the numbers through
`Trainer.log` (so they land in `state.log_history` and reach TensorBoard, W&B or whatever
`report_to` names, as `finetrace/<metric>`), and stops training when a `fail_on` gate holds.
The base's side is read once, when training begins: from `base` when given, else from the
model itself before its first step.

    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.add_callback(FinetraceCallback(trainer, corpus="heldout.txt", data="train.jsonl",
                                           every=100, fail_on=(parse_gate("lost_fraction>0.05"),)))
    trainer.train()
"""

import gc
from pathlib import Path

from torch import nn
from transformers import (
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from finetrace._util.outputs import check_output_dir
from finetrace.errors import FinetraceError
from finetrace.evals.facts import COMMON_FACTS
from finetrace.gates import Gate
from finetrace.models.load import load_model, load_tokenizer
from finetrace.monitor.cheap import WatchConfig
from finetrace.monitor.series import WatchPoint, WatchSeries
from finetrace.run import RunConfig
from finetrace.verbs.live import DEFAULT_EVERY, LiveWatch

PREFIX = "finetrace/"  # of every logged metric: TensorBoard and W&B group them under it
STEP_ZERO = "the model being trained, before its first step"


class FinetraceCallback(TrainerCallback):
    """The cheap audit every `every` steps and at the end of training, logged and gated.

    Args:
        trainer: the trainer this callback is added to; its `log` carries the metrics.
        corpus: unrelated general text, for the trace and the drift.
        facts: cloze facts (JSONL). data: the fine-tuning data; without it the trace is not tested.
        every: optimizer steps between two audits.
        base: the base model; default: the model as training begins (a resumed run must give it).
        config: the cheap audit's budget.
        fail_on: conditions that stop training at the first step they hold (see `finetrace.gates`).
        out: where to write `watch.json` and `watch.html` after each audit (default: nowhere).
    """

    def __init__(
        self,
        trainer: Trainer,
        corpus: str | Path,
        facts: str | Path = COMMON_FACTS,
        data: str | Path | None = None,
        every: int = DEFAULT_EVERY,
        base: str | Path | None = None,
        config: WatchConfig = WatchConfig(),
        fail_on: tuple[Gate, ...] = (),
        out: str | Path | None = None,
    ):
        self.live = LiveWatch(corpus, facts, data, every, config, fail_on)
        self.trainer, self.base = trainer, base
        self.out = check_output_dir(out) if out is not None else None
        self.args: TrainingArguments | None = None  # the trainer's, once training begins

    @property
    def points(self) -> list[WatchPoint]:
        return self.live.points

    @property
    def stopped_at(self) -> int | None:
        """The step a gate stopped training at."""
        return self.live.stopped_at

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ):
        self.args = args
        if self.live.reference is None:  # a second `train()` keeps the first one's base
            self._read_base(model, state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        if state.global_step % self.live.every == 0:
            self._audit(args, state, control, model)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        audited = self.points and self.points[-1].step == state.global_step
        if state.global_step > 0 and not audited:  # the final model, wherever `every` left off
            self._audit(args, state, control, model)

    def _read_base(self, model: nn.Module, state: TrainerState) -> None:
        tokenizer = self._tokenizer()
        if self.base is None:
            if state.global_step > 0:
                raise FinetraceError(
                    f"training resumes at step {state.global_step}, so the model is no longer the base: "
                    f"give FinetraceCallback the base model (base=...)"
                )
            self.live.begin(model, tokenizer)
            return
        parameter = next(model.parameters())
        base = load_model(self.base, parameter.device, parameter.dtype)
        self.live.begin(base, tokenizer)
        del base
        gc.collect()  # only the model being trained stays

    def _tokenizer(self) -> PreTrainedTokenizerBase:
        given = self.trainer.processing_class
        given = getattr(given, "tokenizer", given)  # a multimodal processor holds its tokenizer
        if isinstance(given, PreTrainedTokenizerBase):
            return given
        if self.base is not None:
            return load_tokenizer(self.base)
        raise FinetraceError(
            "FinetraceCallback needs the tokenizer: give the trainer one (processing_class=...) "
            "or the callback the base model it was saved with (base=...)"
        )

    def _audit(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: nn.Module) -> None:
        checkup = self.live.audit(model, state.global_step, args.seed)
        measured = {name: value for name, value in checkup.metrics.items() if value is not None}
        should_log = control.should_log  # logging resets it, which would drop the trainer's own log of this step
        self.trainer.log(
            {f"{PREFIX}{name}": value for name, value in measured.items()}
            | {f"{PREFIX}trace_norm": checkup.trace_norm, f"{PREFIX}audit_seconds": checkup.seconds}
        )
        control.should_log = should_log
        if self.stopped_at == state.global_step:
            control.should_training_stop = True
        if self.out is not None and state.is_world_process_zero:
            self.live.write(self.out, self._base_name, RunConfig(seed=args.seed), args.device)

    @property
    def _base_name(self) -> str:
        return str(self.base or STEP_ZERO)

    @property
    def series(self) -> WatchSeries:
        """The audits so far, as `finetrace watch` records them."""
        return self.live.series(self._base_name, RunConfig(seed=self.args.seed), self.args.device)
