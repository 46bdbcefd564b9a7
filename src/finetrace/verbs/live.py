"""The cheap audit of a model while it trains: the base read once, before the first step, then
an audit every `every` steps, each kept as a point of the series and tested against the gates.

`finetrace finetune --watch-every` and `FinetraceCallback` (for `Trainer`) both run it.
"""

from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace._util.fingerprints import environment
from finetrace._util.outputs import write_json
from finetrace.errors import require
from finetrace.evals.facts import COMMON_FACTS
from finetrace.gates import Gate
from finetrace.monitor.cheap import BaseReference, Checkup, WatchConfig, cheap_audit, read_reference, refuse_untestable
from finetrace.monitor.series import PAGE_NAME, WATCH_NAME, WatchPoint, WatchSeries
from finetrace.report.watch import write_watch_report
from finetrace.run import RunConfig

# Steps between two audits: one costs about 2.3 of the small zoo's training steps (see the
# README), a few percent of 50; a larger model's steps make it cheaper still.
DEFAULT_EVERY = 50


class LiveWatch:
    """The series of cheap audits of one training run.

    Args:
        corpus: unrelated general text, for the trace and the drift.
        facts: cloze facts (JSONL). data: the fine-tuning data; without it the trace is not tested.
        every: optimizer steps between two audits.
        config: the cheap audit's budget.
        fail_on: conditions that stop training at the first step they hold (see `finetrace.gates`).
    """

    def __init__(
        self,
        corpus: str | Path,
        facts: str | Path | None = None,
        data: str | Path | None = None,
        every: int = DEFAULT_EVERY,
        config: WatchConfig = WatchConfig(),
        fail_on: tuple[Gate, ...] = (),
        text_field: str = "text",
    ):
        require(every >= 1, "every", every, "at least 1 optimizer step between audits")
        refuse_untestable(fail_on, data)
        self.corpus, self.data, self.every = corpus, data, every
        self.facts = facts if facts is not None else COMMON_FACTS
        self.config, self.fail_on, self.text_field = config, fail_on, text_field
        self.reference: BaseReference | None = None
        self.points: list[WatchPoint] = []
        self.stopped_at: int | None = None  # the step a gate stopped training at

    @property
    def inputs(self) -> dict[str, str | Path | None]:
        """The files it reads, by name: a run's output must not replace them."""
        return {"watch corpus": self.corpus, "watch facts": self.facts}

    def begin(self, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Read the base's side once: `base` is the model before its first step."""
        self.reference = read_reference(
            base, tokenizer, self.corpus, self.facts, self.data, self.config, self.text_field
        )

    def after_step(self, model: nn.Module, step: int, seed: int) -> bool:
        """Audit `model` when `step` is due; True when a gate holds and training should stop."""
        if step % self.every:
            return False
        self.audit(model, step, seed)
        return self.stopped_at == step

    def audit(self, model: nn.Module, step: int, seed: int) -> Checkup:
        """The cheap audit of `model` at `step`, kept in the series; a gate that holds for the
        first time records the step it stopped training at."""
        checkup = cheap_audit(model, self.reference, self.config, seed)
        self.points.append(WatchPoint(step, checkup))
        if self.stopped_at is None and any(gate.crossed(checkup.metrics) for gate in self.fail_on):
            self.stopped_at = step
        return checkup

    def series(self, base: str, run: RunConfig, device) -> WatchSeries:
        """The audits so far, as `finetrace watch` records them."""
        return WatchSeries(
            base=base,
            corpus=str(self.corpus),
            facts=str(self.facts),
            data=str(self.data) if self.data is not None else None,
            config=self.config,
            run=run,
            key=None,  # a live series is no checkpoint's: no rerun resumes it
            points=self.points,
            gates=list(self.fail_on),
            audited=[point.step for point in self.points],
            environment=environment(device),
        )

    def write(self, out: Path, base: str, run: RunConfig, device) -> WatchSeries:
        """`watch.json` and `watch.html` in `out`."""
        out.mkdir(parents=True, exist_ok=True)
        series = self.series(base, run, device)
        write_json(out / WATCH_NAME, series.to_dict())
        write_watch_report(series, out / PAGE_NAME)
        return series
