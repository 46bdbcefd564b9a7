"""The record of `weights`: every decoder-layer matrix's change, written as `weights.json`."""

from collections import Counter
from dataclasses import dataclass, field

from finetrace._util.records import Result
from finetrace.models.gguf import GgufSource
from finetrace.spectra.intruders import MatrixChange, SpectraConfig

SCHEMA_VERSION = 1
RESULT_NAME = "weights.json"


@dataclass(frozen=True)
class WeightsResult(Result):
    base: str
    finetuned: str
    adapter: bool
    matrices: list[MatrixChange]  # in layer order, then as the model names them
    config: SpectraConfig
    environment: dict[str, str]
    seconds: dict[str, float]
    gguf: dict[str, GgufSource] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # the sha256 of each model's files
    schema_version: int = SCHEMA_VERSION
    derived = ("intruders", "intruders_by_module", "mean_relative_change")

    @property
    def intruders(self) -> int:
        return sum(len(m.intruders) for m in self.matrices)

    @property
    def intruders_by_module(self) -> dict[str, int]:
        """Intruder dimensions summed over the layers, per kind of matrix (`self_attn.q_proj`, ...)."""
        counts = Counter({m.module: 0 for m in self.matrices})
        counts.update(m.module for m in self.matrices for _ in m.intruders)
        return dict(counts)

    @property
    def mean_relative_change(self) -> float:
        changed = [m.relative_change for m in self.matrices]
        return sum(changed) / len(changed) if changed else 0.0
