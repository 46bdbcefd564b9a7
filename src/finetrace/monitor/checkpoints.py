"""The checkpoints of a training run: found from paths, globs or a `Trainer` output directory,
ordered by their training step, and loaded against the base one at a time.

A `Trainer` output directory holds `checkpoint-<step>/` subdirectories, each with the
weights (or a PEFT adapter) and `trainer_state.json`, whose `global_step` is the step.
Only safetensors weights are read: a checkpoint's `optimizer.pt` and `rng_state.pth`
are pickles and are never opened.
"""

import glob
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from finetrace._util.outputs import read_json
from finetrace.errors import FinetraceError
from finetrace.models.load import CONFIG_FILES, load_model
from finetrace.models.pair import config_differences, is_adapter, load_adapted, text_config

TRAINER_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAILING_STEP = re.compile(r"(\d+)$")  # `step-300`, `ckpt_300`: the step a name ends with
STATE_NAME = "trainer_state.json"
GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def find_checkpoints(given: list[str | Path]) -> list[Checkpoint]:
    """Every checkpoint `given` names, by step: model or adapter directories, globs of them (for a
    shell that left them unexpanded), or `Trainer` output directories (their `checkpoint-<step>/`)."""
    paths = [path for item in given for path in _expand(str(item))]
    checkpoints = sorted((Checkpoint(_step(path), path) for path in dict.fromkeys(paths)), key=lambda c: c.step)
    for earlier, later in zip(checkpoints, checkpoints[1:], strict=False):
        if earlier.step == later.step:
            raise FinetraceError(
                f"{earlier.path} and {later.path} are both step {later.step}: give the checkpoints of one run"
            )
    return checkpoints


def is_model_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in CONFIG_FILES)


def _expand(item: str) -> list[Path]:
    path = Path(item)
    if not path.exists() and any(c in item for c in GLOB_CHARACTERS):
        matches = [Path(match) for match in sorted(glob.glob(item)) if is_model_dir(Path(match))]
        if not matches:
            raise FinetraceError(f"{item} matches no model or adapter directory")
        return matches
    if not path.is_dir():
        raise FinetraceError(f"checkpoint {item} is not a directory (nor a glob that matches some)")
    trainer = [child for child in sorted(path.iterdir()) if TRAINER_CHECKPOINT.match(child.name) and child.is_dir()]
    if trainer:
        return trainer
    if is_model_dir(path):
        return [path]
    raise FinetraceError(
        f"{item} is neither a model or adapter directory (config.json, adapter_config.json) nor a "
        f"Trainer output directory with checkpoint-<step>/ subdirectories"
    )


def _step(path: Path) -> int:
    """The training step: Trainer's record of it, else the number the directory's name ends with."""
    state = path / STATE_NAME
    if state.is_file():
        recorded = read_json(state)
        if isinstance(recorded, dict) and isinstance(recorded.get("global_step"), int):
            return recorded["global_step"]
    match = TRAILING_STEP.search(path.name)
    if match is None:
        raise FinetraceError(
            f"cannot tell the training step of {path}: it has no {STATE_NAME} and its name does not end "
            f"with a number; name it <anything>-<step>, as Trainer's checkpoint-<step>"
        )
    return int(match[1])


def load_checkpoint(path: Path, base: str | Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A checkpoint in eval mode: a full model, or a PEFT adapter applied to `base`; refused when it
    is not the base's shape."""
    if is_adapter(path):
        return load_adapted(base, path, device, dtype)
    differences = config_differences(text_config(base), text_config(path))
    if differences:
        raise FinetraceError(f"{base} and {path} are not comparable (base vs checkpoint): {'; '.join(differences)}")
    return load_model(path, device, dtype)
