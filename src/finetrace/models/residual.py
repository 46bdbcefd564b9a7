"""The residual stream of any Hugging Face causal LM: find it, read it, write to it.

Architectures name their decoder layers and final norm differently; the table
below maps each known model type once, and a model that fits none is refused
with the fix in the message. The output head is recomputed in float32 wherever
logits are read: bf16 logits near 10-30 move in steps of 0.06-0.125, enough to
tie the top tokens and to put a floor under any KL divergence. Every hook
lives inside a `with` block.
"""

import copy
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import reduce
from itertools import chain

import torch
import transformers
from torch import nn
from transformers import Cache, DynamicCache

from finetrace.errors import FinetraceError


@dataclass(frozen=True)
class Architecture:
    """Where one family keeps its residual stream: attribute paths from its causal-LM class."""

    layers: str  # the list of decoder layers
    # What runs between the last decoder layer and the output head, in order. A path the model
    # sets to None is a step that model lacks (OPT-350m has no final norm; only it projects out).
    final: tuple[str, ...]
    softcap: str | None = None  # the config field of a tanh cap the model puts on its logits


DECODER = Architecture("model.layers", ("model.norm",))  # the Llama layout most families share

# config.model_type -> layout, checked against transformers 5 by tests/test_architectures.py.
ARCHITECTURES: dict[str, Architecture] = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "phi3",
            "olmo",
            "olmo2",
            "olmo3",
            "olmoe",
            "smollm3",
            "starcoder2",
            "stablelm",
            "glm4",
        ),
        DECODER,
    ),
    **dict.fromkeys(
        ("gemma2", "gemma3_text"), Architecture("model.layers", ("model.norm",), softcap="final_logit_softcapping")
    ),
    "phi": Architecture("model.layers", ("model.final_layernorm",)),
    "gpt2": Architecture("transformer.h", ("transformer.ln_f",)),
    "gpt_neox": Architecture("gpt_neox.layers", ("gpt_neox.final_layer_norm",)),
    "opt": Architecture("model.decoder.layers", ("model.decoder.final_layer_norm", "model.decoder.project_out")),
    "falcon": Architecture("transformer.h", ("transformer.ln_f",)),
}


@dataclass(frozen=True)
class Readout:
    """What turns a last-layer residual into logits: the final norm, the head, a logit cap."""

    norm: nn.Module  # the final norm (with OPT-350m's projection out): last layer -> head input
    unembed: nn.Module
    softcap: float | None = None  # Gemma 2 caps its logits at +-softcap with a tanh

    @property
    def device(self) -> torch.device:
        return next(self.unembed.parameters()).device

    def detached(self) -> "Readout":
        """A copy that outlives its model: the base's lens reads through it once the base is freed."""
        return Readout(copy.deepcopy(self.norm), copy.deepcopy(self.unembed), self.softcap)


@dataclass(frozen=True)
class Layout(Readout):
    """Where a model keeps its decoder layers, and its readout."""

    layers: nn.ModuleList = field(default_factory=nn.ModuleList)

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def find_layout(model: nn.Module) -> Layout:
    """The layout of a causal LM (PEFT-wrapped or not)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    architecture = ARCHITECTURES.get(getattr(config, "model_type", None))
    if architecture is None:
        raise FinetraceError(_unknown_message(inner))
    text = config.get_text_config()
    layers = _attribute(inner, architecture.layers)
    final = [module for path in architecture.final if (module := _attribute(inner, path)) is not None]
    assert len(layers) == text.num_hidden_layers, f"{architecture.layers} is not the layer list"
    softcap = getattr(text, architecture.softcap) if architecture.softcap else None
    return Layout(nn.Sequential(*final), inner.get_output_embeddings(), softcap, layers)


@torch.no_grad()
def logit_lens(readout: Readout, residual: torch.Tensor) -> torch.Tensor:
    """Float32 logits (..., vocab) a residual (..., d) would give as the last layer's output."""
    return _head(readout, _in_float32(readout.norm, residual))


@torch.no_grad()
def final_logits(model: nn.Module, layout: Layout, **inputs: torch.Tensor) -> torch.Tensor:
    """The model's logits (batch, seq, vocab), its output head computed in float32."""
    return head_logits(layout, head_inputs(model, layout, **inputs))


@torch.no_grad()
def head_inputs(model: nn.Module, layout: Layout, **inputs: torch.Tensor) -> torch.Tensor:
    """What the model's head reads (batch, seq, d), in the model's dtype: the forward pass stops
    where the head would run."""
    captured: list[torch.Tensor] = []

    def capture(_module, args):
        captured.append(args[0])
        raise _StopForward

    handle = layout.unembed.register_forward_pre_hook(capture)
    try:
        _forward(model, inputs)
    finally:
        handle.remove()
    return captured[0]


@torch.no_grad()
def head_logits(readout: Readout, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits of the head's inputs `hidden` (from `head_inputs`); non-finite ones refused."""
    logits = _head(readout, hidden.to(readout.device))
    if not torch.isfinite(logits.sum()):  # one NaN or inf anywhere makes the sum non-finite
        raise FinetraceError(
            "the model gives non-finite logits (NaN or inf): its weights or "
            "activations overflow; load it with --dtype float32"
        )
    return logits


@torch.no_grad()
def shared_prefix(
    model: nn.Module, ids: torch.Tensor, rows: int, attention_mask: torch.Tensor | None = None
) -> dict[str, Cache]:
    """The keys and values of prefixes `ids` (batch, n), each read once and repeated for `rows`
    rows, its copies in turn: the keyword arguments with which a forward pass of batch x rows
    continuations reads them as their past. Left-padded prefixes come with their `attention_mask`,
    and their tokens take the positions they would have unpadded."""
    keyword = cache_keyword(model)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache = DynamicCache(config=inner.config)
    inputs = {"input_ids": ids, "use_cache": True, keyword: cache}
    if attention_mask is not None:
        inputs |= {"attention_mask": attention_mask, "position_ids": padded_positions(attention_mask)}
    head_inputs(model, find_layout(model), **inputs)  # fills the cache; the head is never needed
    cache.batch_repeat_interleave(rows)
    return {keyword: cache}


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its row without the left padding (padding at 0), as `generate` counts."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_keyword(model: nn.Module) -> str:
    """The forward's keyword for a KV cache: transformers renamed `past_key_values` to `cache`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once what is needed has been read."""


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
        _forward(model, inputs)
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
    """Overwrite the residual after `layer` at `position` with `vector`, (d,) or one per row
    (batch, d), e.g. for Patchscope."""

    def patch(_module, _inputs, output):
        hidden = _hidden(output).clone()
        hidden[:, position] = vector.to(hidden.dtype)
        return _with_hidden(output, hidden)

    handle = layout.layers[layer].register_forward_hook(patch)
    try:
        yield
    finally:
        handle.remove()


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    try:
        model(**inputs)
    except _StopForward:
        pass


def _head(readout: Readout, hidden: torch.Tensor) -> torch.Tensor:
    logits = _in_float32(readout.unembed, hidden)
    if readout.softcap is not None:  # as the model's own forward does after its head
        logits = torch.tanh(logits / readout.softcap) * readout.softcap
    return logits


def _in_float32(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """`module(inputs)` in float32, with float32 copies of its weights; the module is unchanged."""
    tensors = {
        name: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in chain(module.named_parameters(), module.named_buffers())
    }
    return torch.func.functional_call(module, tensors, (inputs.float(),))


def _hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor; older ones and some architectures a tuple.
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _attribute(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return reduce(getattr, path.split("."), root)
    except AttributeError:
        raise FinetraceError(
            f"{type(root).__name__} has no {path} in transformers {transformers.__version__}; "
            f"update its entry in finetrace.models.residual.ARCHITECTURES to the module's new name"
        ) from None


def _unknown_message(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (
        f"finetrace does not know where {type(model).__name__} (model type {model_type!r}) keeps "
        f"its decoder layers and final norm; known model types: "
        f"{', '.join(sorted(ARCHITECTURES))}. "
        f"To add it, map its model type in finetrace.models.residual.ARCHITECTURES to the attribute paths "
        f"of both, e.g. Architecture('model.layers', ('model.norm',)) for a Llama-like model"
    )
