"""GGUF files (llama.cpp, Ollama) as models: dequantized once, through transformers, into a
cached safetensors directory keyed by the file's sha256, tokenizer included.

Every loader resolves its model through `model_directory`, so a `.gguf` path is accepted
wherever a model directory is, and a GGUF base pairs with a safetensors fine-tune: both are
then plain directories of the same architecture. The directory's `gguf.json` records what
the file was (digest, architecture, quantization) for the records that used it.
"""

import functools
import importlib.util
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from rich.console import Console
from rich.markup import escape

from finetrace._util.cache import cache_dir
from finetrace._util.fingerprints import stored_sha256
from finetrace._util.outputs import read_json, write_json
from finetrace.errors import FinetraceError

GGUF_MAGIC = b"GGUF"
SOURCE_NAME = "gguf.json"
# Tensor types stored unquantized; the quantized ones are those `gguf.quants` can dequantize.
PLAIN_TYPES = ("F32", "F16", "BF16", "F64")
INSTALL_HINT = "pip install 'finetrace[gguf]' (or: pip install gguf)"


@dataclass(frozen=True)
class GgufSource:
    """A model that was given as a GGUF file."""

    file: str
    sha256: str
    architecture: str  # as the file names it (`general.architecture`)
    quantization: str  # the file's type (`general.file_type`), e.g. MOSTLY_Q4_1
    directory: str  # its dequantized float32 copy


def is_gguf(name_or_path: str | Path) -> bool:
    """A file that starts with GGUF's magic bytes, whatever its name."""
    path = Path(name_or_path)
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def model_directory(name_or_path: str | Path) -> str:
    """Where a model loads from: a GGUF file's dequantized directory, anything else as given."""
    return gguf_source(name_or_path).directory if is_gguf(name_or_path) else str(name_or_path)


def gguf_sources(**models: str | Path | None) -> dict[str, GgufSource]:
    """The GGUF files among `models` (role -> model), by role: what a record says it read."""
    return {role: gguf_source(model) for role, model in models.items() if model is not None and is_gguf(model)}


def gguf_source(path: str | Path) -> GgufSource:
    """The GGUF file at `path`, dequantized into the cache on first use."""
    path = Path(path).resolve()
    return _converted(path, stored_sha256(path))


@functools.cache  # keyed by the digest: a file rewritten in place is converted again
def _converted(path: Path, digest: str) -> GgufSource:
    target = cache_dir() / "gguf" / digest[:16]
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / SOURCE_NAME).is_file():
            _dequantize(path, digest, target)
    recorded = read_json(target / SOURCE_NAME)
    return GgufSource(str(path), digest, recorded["architecture"], recorded["quantization"], str(target))


def _dequantize(path: Path, digest: str, target: Path) -> None:
    architecture, quantization = _checked_header(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(
        f"dequantizing {escape(path.name)} ({escape(architecture)}, {quantization}) once", highlight=False
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, NotImplementedError, KeyError, OSError) as error:
        raise FinetraceError(f"transformers cannot read {path} ({architecture}, {quantization}): {error}") from None
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    # The weights are plain float32 now: saved and reloaded as such, not as a GGUF model.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_json(
        partial / SOURCE_NAME,
        {"file": path.name, "sha256": digest, "architecture": architecture, "quantization": quantization},
    )
    partial.rename(target)


def _checked_header(path: Path) -> tuple[str, str]:
    """The file's architecture and quantization, refused with the supported ones named when
    transformers cannot dequantize it."""
    if importlib.util.find_spec("gguf") is None:
        raise FinetraceError(f"{path} is a GGUF file; reading it needs the gguf package: {INSTALL_HINT}")
    from gguf import GGUFReader, LlamaFileType
    from gguf.quants import _type_traits as quantized  # the types gguf-py can dequantize
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError, struct.error) as error:  # what a damaged header raises
        raise FinetraceError(f"{path} is not a readable GGUF file: {error}") from None
    architecture = _field(reader, "general.architecture") or "unknown"
    supported = [name for name in GGUF_SUPPORTED_ARCHITECTURES if name not in ("general", "tokenizer")]
    if architecture.replace("-", "_") not in supported and architecture.replace("moe", "_moe") not in supported:
        raise FinetraceError(
            f"{path} holds a {architecture!r} model, which transformers cannot read from GGUF; "
            f"supported architectures: {', '.join(supported)}"
        )
    readable = {*PLAIN_TYPES, *(kind.name for kind in quantized)}
    unreadable = sorted({t.tensor_type.name for t in reader.tensors} - readable)
    if unreadable:
        raise FinetraceError(
            f"{path} stores tensors as {', '.join(unreadable)}, which gguf cannot dequantize; "
            f"supported types: {', '.join(sorted(readable))}"
        )
    file_type = _field(reader, "general.file_type")
    quantization = LlamaFileType(file_type).name if file_type is not None else "unknown"
    return architecture, quantization


def _field(reader, key: str):
    field = reader.fields.get(key)
    return field.contents() if field is not None else None
