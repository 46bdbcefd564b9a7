"""Fingerprints of what went into a model: data files, weights, software."""

import functools
import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

TRACKED_PACKAGES = ("finetrace", "torch", "transformers", "peft", "tokenizers", "safetensors")
CHUNK_BYTES = 1 << 20


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks so size does not matter."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def stored_sha256(path: str | Path) -> str:
    """`file_sha256` of a file a run reads several times (weights, a GGUF model, a corpus), read once per
    process; a file rewritten in place (another size or mtime) is read again."""
    path = Path(path).resolve()
    stat = path.stat()
    return _stored_sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _stored_sha256(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def data_sha256(path: str | Path) -> str:
    """sha256 of a data file, or of a directory's files and their names; a hub dataset id as given.
    Read once per process: a run's stages and its record all name the same corpus."""
    path = Path(path)
    if path.is_file():
        return stored_sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return hashlib.sha256(
            "".join(f"{p.relative_to(path)}:{stored_sha256(p)}\n" for p in files).encode()
        ).hexdigest()
    return str(path)


def json_sha256(value: Any) -> str:
    """sha256 of a JSON-ready value (settings, other digests), independent of key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every named parameter and buffer, independent of how the files are sharded."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def environment(device: torch.device) -> dict[str, str]:
    """Versions and hardware of the run."""
    versions = {name: _version(name) for name in TRACKED_PACKAGES}
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        **versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": f"{device} ({hardware or 'unknown'})",
        "torch_threads": str(torch.get_num_threads()),
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
