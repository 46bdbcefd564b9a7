"""The decoder layers' weight matrices of a base and its fine-tune, side by side, one at a time.

A whole fine-tuned model's matrices are read tensor by tensor from both models' safetensors
files, never a model loaded; an adapter's from the base with the adapter on, each matrix's
change computed by PEFT from its factors (scaling, rank-stabilised or not, included) when it
is reached. Either way one pair of matrices is in memory beside what is loaded.
"""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from finetrace.errors import FinetraceError
from finetrace.models.load import local_directory
from finetrace.models.pair import ModelPair, check_comparable, is_adapter, load_pair, text_config
from finetrace.models.residual import ARCHITECTURES

SHARD_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class MatrixPair:
    layer: int
    module: str  # within the layer, e.g. "mlp.down_proj"
    base: torch.Tensor  # (out, in), float32
    finetuned: torch.Tensor


def layer_matrices(base: str | Path, finetuned: str | Path, strict: bool = False) -> Iterator[MatrixPair]:
    """Every 2-D weight of the decoder layers that the fine-tune can have changed, in layer order:
    all of them for a whole model, the adapted ones for a PEFT adapter. The pair is checked, and
    an adapter loaded, before this returns."""
    if is_adapter(finetuned):
        pair = load_pair(base, finetuned, "cpu", "float32", strict)  # checks the adapter fits this base
        return _adapted_matrices(pair, rf"(?:.*\.)?{_layer_pattern(base)}")
    check_comparable(base, finetuned)
    base_files, finetuned_files = _tensor_files(base), _tensor_files(finetuned)
    weights = [name.removesuffix(".weight") for name in base_files if name.endswith(".weight")]
    pattern = _layer_pattern(base)
    names = sorted((int(m[1]), m[2], f"{name}.weight") for name in weights if (m := re.fullmatch(pattern, name)))
    if missing := [name for *_, name in names if name not in finetuned_files]:
        raise FinetraceError(f"{finetuned} has no weight {missing[0]}, which {base} has: give the whole checkpoint")
    return _whole_matrices(names, base_files, finetuned_files)


def _whole_matrices(names: list[tuple[int, str, str]], base_files, finetuned_files) -> Iterator[MatrixPair]:
    for layer, module, name in names:
        pair = MatrixPair(layer, module, _read(base_files[name], name), _read(finetuned_files[name], name))
        if pair.base.ndim == 2:  # norms and biases are vectors
            if pair.base.shape != pair.finetuned.shape:
                raise FinetraceError(
                    f"{name} is {tuple(pair.base.shape)} in one model, {tuple(pair.finetuned.shape)} in the other"
                )
            yield pair


def _adapted_matrices(pair: ModelPair, pattern: str) -> Iterator[MatrixPair]:
    with pair.use("finetuned") as (model, _), torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and (match := re.fullmatch(pattern, name)):
                weight = module.get_base_layer().weight.float()
                delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters).float()
                yield MatrixPair(int(match[1]), match[2], weight, weight + delta)


def _layer_pattern(model: str | Path) -> str:
    """A regular expression of a decoder layer's module names: (layer index, module in the layer)."""
    model_type = text_config(model).model_type
    if model_type not in ARCHITECTURES:
        raise FinetraceError(f"finetrace does not know where a {model_type!r} model keeps its decoder layers")
    return rf"{re.escape(ARCHITECTURES[model_type].layers)}\.(\d+)\.(.+)"


def _tensor_files(model: str | Path) -> dict[str, Path]:
    """Each tensor's name -> the safetensors file that holds it."""
    directory = local_directory(model)
    index = directory / SHARD_INDEX
    if index.is_file():
        return {name: directory / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FinetraceError(f"{model} holds no safetensors weights (pickled .bin weights are not read)")
    names = {}
    for path in files:
        with safe_open(path, framework="pt") as stored:
            names |= dict.fromkeys(stored.keys(), path)
    return names


def _read(path: Path, name: str) -> torch.Tensor:
    with safe_open(path, framework="pt") as stored:
        return stored.get_tensor(name).float()
