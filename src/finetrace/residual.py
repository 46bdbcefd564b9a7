"""The residual stream of any Hugging Face causal LM: find it, read it, write to it.

Architectures name their decoder layers and final norm differently; the table
below maps the known names once, and a model that fits none is refused with
the fix in the message. Every hook lives inside a `with` block.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from finetrace.errors import FinetraceError

# Attribute paths, tried in order (Llama/Qwen/Gemma/Mistral, multimodal wrappers, GPT-2, GPT-NeoX, OPT).
LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers",
               "model.decoder.layers")
NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f",
              "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")


@dataclass(frozen=True)
class Layout:
    """Where a model keeps its decoder layers, final norm and unembedding."""

    layers: nn.ModuleList
    norm: nn.Module
    unembed: nn.Module

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def find_layout(model: nn.Module) -> Layout:
    """The layout of a causal LM (PEFT-wrapped or not)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers, norm = _first_path(inner, LAYER_PATHS), _first_path(inner, NORM_PATHS)
    unembed = inner.get_output_embeddings() if isinstance(inner, PreTrainedModel) else None
    if layers is None or norm is None or unembed is None:
        raise FinetraceError(
            f"cannot find the decoder layers, final norm and output head of {type(inner).__name__}; "
            f"known layer paths: {', '.join(LAYER_PATHS)}; known norm paths: {', '.join(NORM_PATHS)}"
        )
    return Layout(layers, norm, unembed)


def logit_lens(layout: Layout, residual: torch.Tensor) -> torch.Tensor:
    """Logits a residual vector would give if it were the last layer's output: (..., vocab)."""
    weight = next(layout.norm.parameters())
    return layout.unembed(layout.norm(residual.to(weight.dtype))).float()


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest needed layer has run."""


@torch.no_grad()
def read_residuals(
    model: nn.Module, layout: Layout, layers: list[int], **inputs: torch.Tensor
) -> dict[int, torch.Tensor]:
    """Residual after each decoder layer in `layers`, each (batch, seq, d); stops after the deepest."""
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def hook(index: int):
        def record(_module, _inputs, output):
            captured[index] = _hidden(output)
            if index == deepest:
                raise _StopForward

        return record

    handles = [layout.layers[i].register_forward_hook(hook(i)) for i in layers]
    try:
        model(**inputs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


@contextmanager
def add_to_residual(layout: Layout, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """Add `vector` (d,) to the residual after `layer` at every position, e.g. for steering."""

    def steer(_module, _inputs, output):
        return _with_hidden(output, _hidden(output) + vector.to(_hidden(output).dtype))

    handle = layout.layers[layer].register_forward_hook(steer)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def set_residual(layout: Layout, layer: int, position: int, vector: torch.Tensor) -> Iterator[None]:
    """Overwrite the residual after `layer` at `position` with `vector` (d,), e.g. for Patchscope."""

    def patch(_module, _inputs, output):
        hidden = _hidden(output).clone()
        hidden[:, position] = vector.to(hidden.dtype)
        return _with_hidden(output, hidden)

    handle = layout.layers[layer].register_forward_hook(patch)
    try:
        yield
    finally:
        handle.remove()


def _hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor; older ones and some architectures a tuple.
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _first_path(root: nn.Module, paths: tuple[str, ...]) -> nn.Module | None:
    for path in paths:
        module = root
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if module is not None:
            return module
    return None
