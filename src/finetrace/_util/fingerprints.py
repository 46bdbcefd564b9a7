"""Fingerprints of what went into a model: data files, weights, software."""

import hashlib
import platform
import sys
from importlib import metadata
from pathlib import Path

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
