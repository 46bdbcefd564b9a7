"""The record of `forget`: its settings and every fact, drift and behaviour change it found,
written as `forget.json`."""

from dataclasses import dataclass, field

from finetrace._util.records import Result
from finetrace.evals.behaviour import BehaviourConfig, BehaviourResult
from finetrace.evals.drift import DriftConfig, DriftResult
from finetrace.evals.facts import ClozeFact, FactScore
from finetrace.evals.flips import FlipMatrix
from finetrace.models.gguf import GgufSource
from finetrace.run import RunConfig

SCHEMA_VERSION = 4
RESULT_NAME = "forget.json"


@dataclass(frozen=True)
class ForgetConfig:
    drift: DriftConfig = field(default_factory=DriftConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)


@dataclass(frozen=True)
class FactChange:
    """One fact as both models see it."""

    fact: ClozeFact
    base: FactScore
    finetuned: FactScore


@dataclass(frozen=True)
class ForgetResult(Result):
    """Everything `forget` found; written as `forget.json`."""

    base: str
    finetuned: str
    facts_source: str
    flips: FlipMatrix
    by_category: dict[str, FlipMatrix]
    facts: list[FactChange]
    drift: DriftResult | None  # None when no general corpus was given
    corpus: str | None
    config: ForgetConfig
    run: RunConfig
    environment: dict[str, str]
    seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # doubts about the pair (see `ModelPair.warnings`)
    behaviour: BehaviourResult | None = None  # None when no behaviour prompts were given
    gguf: dict[str, GgufSource] = field(default_factory=dict)  # the inputs given as GGUF files, by role
    # What went in, by role: the sha256 of each model's files and each data file (a hub dataset: its id).
    inputs: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    derived = ("lost",)

    @property
    def lost(self) -> list[FactChange]:
        """Facts the base knew and the fine-tune does not, the most confidently lost first."""
        lost = [c for c in self.facts if c.base.known and not c.finetuned.known]
        return sorted(lost, key=lambda c: c.finetuned.answer_logprob - c.base.answer_logprob)
