"""Streaming moments: sums in float64 that merge, save and resume.

Memory is independent of the number of samples: a mean over ten million
residuals costs as much as a mean over ten.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


@dataclass
class RunningMoments:
    """Per-cell count, sum and sum of squares of vectors of width `d`.

    Cells are an arbitrary leading shape, e.g. (layers, positions); each cell
    accumulates vectors of shape (d,).
    """

    count: torch.Tensor  # (*cells,) float64
    total: torch.Tensor  # (*cells, d) float64
    total_sq: torch.Tensor  # (*cells, d) float64

    @classmethod
    def zeros(cls, cells: tuple[int, ...], d: int) -> "RunningMoments":
        return cls(
            torch.zeros(cells, dtype=torch.float64),
            torch.zeros((*cells, d), dtype=torch.float64),
            torch.zeros((*cells, d), dtype=torch.float64),
        )

    def add(self, values: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch: `values` (batch, *cells, d), `mask` (batch, *cells) of 0/1."""
        weights = mask.to(torch.float64)
        values = values.to(torch.float64) * weights.unsqueeze(-1)
        self.count += weights.sum(0)
        self.total += values.sum(0)
        self.total_sq += (values * values).sum(0)

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """The moments of both sample sets together (e.g. from two workers)."""
        return RunningMoments(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> torch.Tensor:  # (*cells, d)
        return self.total / self.count.clamp(min=1).unsqueeze(-1)

    @property
    def variance(self) -> torch.Tensor:  # (*cells, d), unbiased
        n = self.count.unsqueeze(-1)
        return ((self.total_sq - n * self.mean**2) / (n - 1).clamp(min=1)).clamp(min=0)

    @property
    def standard_error(self) -> torch.Tensor:  # (*cells, d) standard error of the mean
        return (self.variance / self.count.clamp(min=1).unsqueeze(-1)).sqrt()

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.count": self.count, f"{prefix}.total": self.total, f"{prefix}.total_sq": self.total_sq}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "RunningMoments":
        return cls(tensors[f"{prefix}.count"], tensors[f"{prefix}.total"], tensors[f"{prefix}.total_sq"])


def save_moments(path: Path, moments: dict[str, RunningMoments], metadata: dict[str, str]) -> None:
    """Write named moments atomically, so an interrupted write never corrupts a checkpoint."""
    save_tensors(path, {k: v for name, m in moments.items() for k, v in m.to_tensors(name).items()}, metadata)


def load_moments(path: Path, names: list[str]) -> tuple[dict[str, RunningMoments], dict[str, str]]:
    """Named moments and the metadata saved with them, in one read."""
    tensors, metadata = load_tensors(path)
    return {name: RunningMoments.from_tensors(tensors, name) for name in names}, metadata


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file written beside `path` and renamed into place: never read half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=metadata)
    partial.replace(path)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file, and its metadata, in one read."""
    with safe_open(str(path), "pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors; none for a file that is
    damaged (cut short by a full disk, say), so it is computed again rather than trusted."""
    try:
        with safe_open(str(path), "pt") as file:
            return file.metadata() or {}
    except (SafetensorError, OSError):
        return {}
