"""What a fine-tune is told: how long and how hard to train, the LoRA shape, the mix.

Plain settings, loaded without torch, so the command line and the zoo's recipes read them cheaply.
"""

import math
from dataclasses import dataclass, replace

from finetrace.errors import require

FULL_LEARNING_RATE = 2e-5
LORA_LEARNING_RATE = 2e-4


@dataclass(frozen=True)
class TrainConfig:
    """How long and how hard to train."""

    epochs: float = 3.0  # passes over the data, unless `steps` is set
    steps: int | None = None  # optimizer steps; overrides `epochs`
    learning_rate: float | None = None  # None: FinetuneConfig picks the usual rate for its mode
    batch_size: int = 8
    context_length: int = 512  # longer documents are truncated (or packed, with `pack`)
    pack: bool = False  # concatenate documents into full blocks, as in pretraining
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        rate = self.learning_rate
        for name, ok, expected in (
            ("epochs", _positive(self.epochs), "a positive number of passes over the data"),
            ("steps", self.steps is None or self.steps >= 1, "at least 1 optimizer step, or None"),
            ("learning_rate", rate is None or _positive(rate), "a positive number, or None"),
            ("batch_size", self.batch_size >= 1, "at least 1 example per step"),
            ("context_length", self.context_length >= 2, "at least 2 tokens (one to predict from)"),
            ("warmup_fraction", 0 <= self.warmup_fraction < 1, "a fraction in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("max_grad_norm", _positive(self.max_grad_norm), "a positive number"),
        ):
            require(ok, name, getattr(self, name), expected)

    def total_steps(self, n_examples: int) -> int:
        return self.steps or max(1, math.ceil(self.epochs * n_examples / self.batch_size))


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter shape; `targets` are module names, or peft's 'all-linear' shortcut."""

    rank: int = 16
    alpha: int = 32
    targets: tuple[str, ...] = ("all-linear",)  # add 'lm_head' to adapt the output head too
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name, ok, expected in (
            ("rank", self.rank >= 1, "at least 1"),
            ("alpha", math.isfinite(self.alpha) and self.alpha > 0, "a positive number"),
            ("targets", bool(self.targets) and all(self.targets), "module names such as q_proj,v_proj"),
            ("dropout", 0 <= self.dropout < 1, "a probability in [0, 1)"),
        ):
            require(ok, f"LoRA {name}", getattr(self, name), expected)

    def peft_config(self):
        """peft's `LoraConfig` of these settings."""
        import peft  # here: the configs load without torch

        targets = "all-linear" if self.targets == ("all-linear",) else list(self.targets)
        return peft.LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            target_modules=targets,
            lora_dropout=self.dropout,
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tune besides its data."""

    training: TrainConfig = TrainConfig()
    lora: LoraSettings | None = None  # None: full fine-tuning
    mix_ratio: float = 1.0  # general documents per fine-tuning document, with a general corpus
    # Fine-tuning examples scored before and after training; None: sized to the run (`probe_size`).
    loss_probe_examples: int | None = None

    def __post_init__(self) -> None:
        require(
            math.isfinite(self.mix_ratio) and self.mix_ratio > 0,
            "mix_ratio",
            self.mix_ratio,
            "a positive number of general documents per fine-tuning document",
        )
        probe = self.loss_probe_examples
        require(probe is None or probe >= 1, "loss_probe_examples", probe, "at least 1, or None")
        if self.training.learning_rate is None:  # the usual rates: LoRA wants about 10x more
            rate = LORA_LEARNING_RATE if self.lora else FULL_LEARNING_RATE
            object.__setattr__(self, "training", replace(self.training, learning_rate=rate))
