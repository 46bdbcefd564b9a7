"""The settings every stage of a run shares: where and how the models run, the seed, how text is read."""

from dataclasses import dataclass

from finetrace.errors import FinetraceError, require

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RunConfig:
    device: str = "auto"  # auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps
    dtype: str = "auto"  # auto: bfloat16 on a CUDA GPU that has it, else float32; training: float32
    seed: int = 0  # of every random choice: the null, steering's samples, the bootstrap, training's order
    strict: bool = False  # refuse an adapter finetrace trained on another base (else a warning)
    text_field: str = "text"  # the field of a JSONL record that holds its text

    def __post_init__(self) -> None:
        check_device(self.device)
        require(self.dtype in DTYPE_CHOICES, "dtype", self.dtype, f"one of {', '.join(DTYPE_CHOICES)}")
        # numpy's generators take no negative seed, torch's none of 64 bits or more
        require(0 <= self.seed < 2**63, "seed", self.seed, "a whole number from 0 to 2**63 - 1")


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before any model loads."""
    if device in ("auto", "cpu"):
        return
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "mps") or (index and not index.isdigit()) or device.endswith(":"):
        raise FinetraceError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    import torch  # here, not at the top: `finetrace --help` and the configs need no torch

    available = torch.cuda.is_available() if kind == "cuda" else torch.backends.mps.is_available()
    if not available:
        raise FinetraceError(
            f"--device {device}: this machine has no {kind} device (or torch was built "
            f"without it); use --device cpu, or auto to pick what is there"
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise FinetraceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
