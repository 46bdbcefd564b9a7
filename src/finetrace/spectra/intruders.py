"""Intruder dimensions: singular vectors of a fine-tuned matrix that no singular vector of the
base's matrix resembles (Shuttleworth et al. 2024, "LoRA vs full fine-tuning: an illusion of
equivalence", Algorithm 1).

Of the fine-tuned matrix's `top_k` leading left singular vectors, one is an intruder when its
largest absolute cosine similarity with every left singular vector of the base's matrix is
below `threshold`. The paper finds them in LoRA fine-tunes, rarely in full ones, and ties
them to forgetting: scaling their singular values down restores the pretraining behaviour.
"""

from dataclasses import dataclass

import torch

from finetrace.errors import FinetraceError


@dataclass(frozen=True)
class SpectraConfig:
    top_k: int = 10  # leading singular vectors of each fine-tuned matrix examined
    threshold: float = 0.5  # an intruder's largest |cosine| with any base singular vector is below this

    def __post_init__(self) -> None:
        if self.top_k < 1 or not 0 < self.threshold < 1:
            raise FinetraceError(
                f"top_k {self.top_k}, threshold {self.threshold}: expected top_k >= 1, 0 < threshold < 1"
            )


@dataclass(frozen=True)
class Intruder:
    index: int  # its rank among the fine-tuned matrix's singular vectors, 0 the largest
    singular_value: float
    similarity: float  # its largest |cosine| with a singular vector of the base's matrix


@dataclass(frozen=True)
class MatrixChange:
    layer: int
    module: str  # within the layer, e.g. "mlp.down_proj"
    shape: tuple[int, int]
    relative_change: float  # ||W - W0|| / ||W0||, Frobenius
    effective_rank: float  # of W - W0: exp of the entropy of its normalised singular values (0 if unchanged)
    intruders: list[Intruder]


@torch.no_grad()
def matrix_change(
    layer: int, module: str, base: torch.Tensor, finetuned: torch.Tensor, config: SpectraConfig
) -> MatrixChange:
    """How a fine-tune changed one (out, in) weight matrix."""
    change = finetuned - base
    base_vectors = torch.linalg.svd(base, full_matrices=False).U
    vectors, values, _ = torch.linalg.svd(finetuned, full_matrices=False)
    top = min(config.top_k, values.numel())
    similarity = (vectors[:, :top].T @ base_vectors).abs().amax(dim=1)  # (top,)
    intruders = [
        Intruder(index, values[index].item(), similarity[index].item())
        for index in range(top)
        if similarity[index] < config.threshold
    ]
    return MatrixChange(
        layer,
        module,
        tuple(base.shape),
        (change.norm() / base.norm().clamp(min=1e-30)).item(),
        effective_rank(torch.linalg.svdvals(change)),
        intruders,
    )


def effective_rank(singular_values: torch.Tensor) -> float:
    """Roy and Vetterli's effective rank: exp(entropy) of the singular values as a distribution;
    r equal values give r, one dominant value gives about 1."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return (-(p * p.log()).sum()).exp().item()
