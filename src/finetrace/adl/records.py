"""The record of a diff: its settings and everything it found, written as `diff.json`."""

from dataclasses import dataclass, field

from finetrace._util.records import Result
from finetrace.adl.collect import CollectConfig
from finetrace.adl.decode import DecodeConfig, Patchscope, TokenScore
from finetrace.adl.domain import check_reported
from finetrace.adl.score import ScoreConfig, Significance
from finetrace.adl.steer import SteerConfig, Steering
from finetrace.errors import FinetraceError, require
from finetrace.models.gguf import GgufSource
from finetrace.run import RunConfig

SCHEMA_VERSION = 5
SIGNIFICANT = 0.01  # the level at which a trace is called clear
RESULT_NAME = "diff.json"
TENSORS_NAME = "differences.safetensors"


@dataclass(frozen=True)
class DiffConfig:
    """Every setting of a diff run; the defaults are the paper's where it has one."""

    collect: CollectConfig = CollectConfig()
    decode: DecodeConfig = DecodeConfig()
    score: ScoreConfig = ScoreConfig()
    steer: SteerConfig = SteerConfig()
    # The first n text positions that are not the attention sink are decoded and scored (the
    # paper: 0-4 after the BOS; 1-5 where a tokenizer adds none and the first text token is the sink).
    reported_positions: int = 5
    steer_position: int | None = None  # the text position whose difference steers; None: the first read

    def __post_init__(self) -> None:
        check_reported(self.reported_positions, self.collect.positions)
        if self.steer_position is not None and not 0 <= self.steer_position < self.collect.positions:
            raise FinetraceError(f"steering position {self.steer_position}: expected 0 to {self.collect.positions - 1}")


@dataclass(frozen=True)
class PositionTrace:
    """What the mean difference at one (layer, position) says."""

    layer: int
    position: str  # "BOS", "0", "1", ...
    sink: bool  # the attention sink: its norm is outsized, and it stays out of the typical norm
    norm: float  # L2 norm of the mean difference
    norm_stderr: float  # L2 norm of its per-dimension standard errors
    relative_norm: float  # norm / typical norm of the fine-tuned residual there
    lens_finetuned: list[TokenScore]  # logit lens through the fine-tuned model's head
    lens_base: list[TokenScore]  # ... and through the base model's head
    patchscope: Patchscope
    significance: Significance | None  # relevant lens tokens against the null; None untested
    relevant_fraction: float | None  # of lens_finetuned; None without the fine-tuning data


@dataclass(frozen=True)
class DiffResult(Result):
    """Everything a diff found; written as `diff.json`."""

    base: str
    finetuned: str
    adapter: bool
    corpus: str
    texts: int
    data: str | None  # the fine-tuning data relevance was read from; None: untested
    traces: list[PositionTrace]
    steering: Steering
    steered_position: str  # the label of the text position whose difference steered
    # Relevant lens tokens summed over the text positions of the first layer, against the null;
    # None without the data: relevance read from the fine-tune itself would make the test circular.
    significance: Significance | None
    relevant_unreadable: int  # relevant tokens left out of the lists as unreadable (special, fragment)
    config: DiffConfig
    run: RunConfig
    environment: dict[str, str]
    seconds: dict[str, float]
    similarity: dict[str, float] | None = None  # steered/unsteered vs data/general text
    control: str | None = None
    control_significance: Significance | None = None  # the control's trace, scored the same way
    warnings: list[str] = field(default_factory=list)  # doubts about the pair (see `ModelPair.warnings`)
    gguf: dict[str, GgufSource] = field(default_factory=dict)  # the inputs given as GGUF files, by role
    # What went in, by role: the sha256 of each model's files and each data file (a hub dataset: its id).
    inputs: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    derived = ("trace_strength", "p_value", "clear", "control_passes", "lens_blind")

    def __post_init__(self) -> None:  # a record read back is held to what a diff writes
        require(bool(self.traces), "traces", self.traces, "at least one position's trace")

    @property
    def trace_strength(self) -> float | None:
        """The share of the scored lens tokens that are domain tokens beyond the null's mean."""
        return self.significance.strength if self.significance else None

    @property
    def p_value(self) -> float | None:
        return self.significance.p_value if self.significance else None

    @property
    def lens_blind(self) -> bool:
        """The test had nothing to count: no domain token in the lens of the difference or of most
        null draws. Its p-value then says nothing; the verdict says so and points at steering."""
        return self.significance is not None and self.significance.blind

    @property
    def control_passes(self) -> bool:
        """The control, which is not about the domain, passes the test too: the test cannot tell
        this fine-tune's trace from a generic fine-tuning shift on this base and data."""
        return self.control_significance is not None and self.control_significance.p_value < SIGNIFICANT

    @property
    def clear(self) -> bool:
        """The verdict: the test finds the data's domain in the trace, and the control does not (and
        the p-value is not a tie-break of counts that are all zero)."""
        return (
            self.p_value is not None and self.p_value < SIGNIFICANT and not self.control_passes and not self.lens_blind
        )
