"""GGUF files (llama.cpp, Ollama) as models: dequantized once, through transformers, into a
cached safetensors directory keyed by the file's sha256, tokenizer included.

Every loader resolves its model through `model_directory`, so a `.gguf` path is accepted
wherever a model directory is, and a GGUF base pairs with a safetensors fine-tune: both are
then plain directories of the same architecture. The directory's `gguf.json` records what
the file was (digest, architecture, quantization) for the records that used it.
"""

import functools
import importlib.util
import mmap
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from finetrace._util.cache import cache_dir
from finetrace._util.fingerprints import stored_sha256
from finetrace._util.locks import announced_lock
from finetrace._util.outputs import read_json, resolved, write_json
from finetrace._util.terminal import escape
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
    if Path(name_or_path).is_symlink():
        resolved(name_or_path, "the model")  # else a loop would be looked for on the hub
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
    with announced_lock(str(target) + ".lock", f"dequantizing {path.name}"):
        if not (target / SOURCE_NAME).is_file():
            _dequantize(path, digest, target)
    recorded = read_json(target / SOURCE_NAME)
    return GgufSource(str(path), digest, recorded["architecture"], recorded["quantization"], str(target))


def _dequantize(path: Path, digest: str, target: Path) -> None:
    architecture, quantization = _checked_header(path)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(
        f"dequantizing {escape(path.name)} ({escape(architecture)}, {quantization}) once", highlight=False
    )
    try:
        # Each of the three reads the whole file; the config is passed on so it is read once.
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, config=config, dtype=torch.float32
        )
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
    from gguf import GGMLQuantizationType, LlamaFileType
    from gguf.quants import _type_traits as quantized  # the types gguf-py can dequantize
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        fields, tensor_types = _header(path)
        architecture = str(fields.get("general.architecture", "unknown"))
        names = {GGMLQuantizationType(kind).name for kind in tensor_types}
        quantization = LlamaFileType(fields["general.file_type"]).name if "general.file_type" in fields else "unknown"
    except (ValueError, OSError, struct.error, UnicodeDecodeError) as error:  # what a damaged header raises
        raise FinetraceError(f"{path} is not a readable GGUF file: {error}") from None
    supported = [name for name in GGUF_SUPPORTED_ARCHITECTURES if name not in ("general", "tokenizer")]
    if architecture.replace("-", "_") not in supported and architecture.replace("moe", "_moe") not in supported:
        raise FinetraceError(
            f"{path} holds a {architecture!r} model, which transformers cannot read from GGUF; "
            f"supported architectures: {', '.join(supported)}"
        )
    readable = {*PLAIN_TYPES, *(kind.name for kind in quantized)}
    if unreadable := sorted(names - readable):
        raise FinetraceError(
            f"{path} stores tensors as {', '.join(unreadable)}, which gguf cannot dequantize; "
            f"supported types: {', '.join(sorted(readable))}"
        )
    return architecture, quantization


# GGUF's value types by code: struct formats for the scalars; 8 is a string, 9 an array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


def _header(path: Path) -> tuple[dict[str, object], set[int]]:
    """The scalar and string fields of a GGUF file's header, and the type codes of its tensors.

    Read with `struct` rather than `gguf.GGUFReader`, which makes an array for every entry of
    the vocabulary (14 s for Gemma-3's 262k) where this steps over them."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = _Cursor(data)
        magic, version, tensors, count = header.take("4sIQQ")
        if magic != GGUF_MAGIC or version not in (2, 3):
            raise ValueError(f"magic {magic!r}, version {version} (GGUF versions 2 and 3 are read)")
        fields = {header.string(): header.value(header.take("I")) for _ in range(count)}
        types = set()
        for _ in range(tensors):
            header.string()  # the name
            header.skip(8 * header.take("I"))  # the dimensions
            types.add(header.take("I"))
            header.skip(8)  # where its data starts
        return fields, types


class _Cursor:
    """GGUF's little-endian values, read one after another."""

    def __init__(self, data: mmap.mmap):
        self.data, self.offset = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def skip(self, length: int) -> None:
        self.offset += length

    def string(self) -> str:
        length = self.take("Q")
        self.skip(length)
        return self.data[self.offset - length : self.offset].decode()

    def value(self, kind: int) -> object:
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind != ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item, count = self.take("IQ")
        if item in SCALARS:
            self.skip(count * struct.calcsize(SCALARS[item]))
        elif item == STRING:  # stepped over undecoded: a vocabulary's tokens can be raw bytes
            for _ in range(count):
                self.skip(self.take("Q"))
        else:
            for _ in range(count):
                self.value(item)
        return None  # arrays (the vocabulary, its scores) are not needed here
