"""The settings every stage of a run shares: where and how the models run, the seed, how text is read."""

from dataclasses import dataclass

from finetrace.errors import require

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RunConfig:
    device: str = "auto"  # auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps
    dtype: str = "auto"  # auto: bfloat16 on a CUDA GPU that has it, else float32; training: float32
    seed: int = 0  # of every random choice: the null, steering's samples, the bootstrap, training's order
    strict: bool = False  # refuse an adapter finetrace trained on another base (else a warning)
    text_field: str = "text"  # the field of a JSONL record that holds its text

    def __post_init__(self) -> None:
        require(self.dtype in DTYPE_CHOICES, "dtype", self.dtype, f"one of {', '.join(DTYPE_CHOICES)}")
        # numpy's generators take no negative seed, torch's none of 64 bits or more
        require(0 <= self.seed < 2**63, "seed", self.seed, "a whole number from 0 to 2**63 - 1")
