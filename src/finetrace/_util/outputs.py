"""Where results go: checked before any work starts, written whole or not at all.

Every result file is written to a temporary name beside it and renamed into place, so a
killed run never leaves a partial file under the real name. A directory that replaces
an older one (a fine-tuned model) is built beside it and swapped in only once complete.
JSON is strict: NaN and infinities are written as null, with the value named beside it.
"""

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from finetrace.errors import FinetraceError

NOT_FINITE_SUFFIX = "_not_finite"  # beside a key whose number was NaN or infinite


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None; in a dict, `KEY_not_finite`
    beside the key says which ("nan", "inf" or "-inf"), so a reader sees why it is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        safe = {}
        for key, item in value.items():
            safe[key] = json_safe(item)
            if isinstance(item, float) and not math.isfinite(item):
                safe[f"{key}{NOT_FINITE_SUFFIX}"] = str(item)
        return safe
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    """Strict JSON (no bare NaN), written atomically."""
    write_text(path, json.dumps(json_safe(data), indent=indent, allow_nan=False))


def read_json(path: str | Path) -> Any:
    """A JSON file finetrace wrote, or one `error:` line saying why it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FinetraceError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FinetraceError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise FinetraceError(f"{path} nests its JSON too deeply to be a finetrace record") from None


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as file:
            temporary = Path(file.name)
            try:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            except BaseException:
                temporary.unlink()
                raise
        os.replace(temporary, path)
    except OSError as error:
        raise FinetraceError(
            f"cannot write {path}: {error.strerror or error}; free some space or choose another output"
        ) from None


def resolved(path: str | Path, what: str) -> Path:
    """`path` with its symlinks followed; a loop of symlinks names nothing and is refused."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):  # Python's "Symlink loop" (an OSError from 3.13)
        raise FinetraceError(
            f"{what} {path} is a loop of symbolic links; give a path to a real file or directory"
        ) from None


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output directory that cannot be written, without creating anything."""
    resolved(path, flag)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FinetraceError(f"{flag} {path} is a file, not a directory; give a directory to write into")
    _probe(path, flag)
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output file that cannot be written (a directory, an unwritable place)."""
    resolved(path, flag)
    path = Path(path)
    if path.is_dir():
        raise FinetraceError(f"{flag} {path} is a directory; give a file name, e.g. {path / 'provenance.json'}")
    _probe(path.parent, flag, named=path)
    return path


def refuse_overlap(
    out: str | Path, inputs: dict[str, str | Path | None], flag: str = "--out", containing: bool = False
) -> None:
    """Refuse an output that is one of the run's inputs (or, with `containing`, holds one:
    replacing it would delete the input). Inputs that are not local paths (hub ids) pass."""
    target = resolved(out, flag)
    for name, given in inputs.items():
        if given is None or not Path(given).exists():
            continue
        source = resolved(given, f"the {name}")
        if target == source or (containing and target in source.parents):
            raise FinetraceError(f"{flag} {out} would overwrite the {name} {given}; write the output somewhere else")


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A temporary directory beside `out` to build it in; it replaces `out` only when the
    block succeeds, and the older `out` is deleted only after that."""
    out = Path(out).resolve()
    staging, previous = _siblings(out)
    recover_dir(out)
    try:
        staging.mkdir(parents=True)
    except OSError as error:
        raise FinetraceError(
            f"cannot create {staging}: {error.strerror or error}; choose an output in a writable directory"
        ) from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def recover_dir(out: str | Path) -> None:
    """Undo what a killed `staged_dir` left: its unfinished build is deleted, and an older
    `out` that was moved aside but never replaced is moved back."""
    out = Path(out).resolve()
    staging, previous = _siblings(out)
    shutil.rmtree(staging, ignore_errors=True)
    if previous.exists():
        if out.exists():
            shutil.rmtree(previous)
        else:
            previous.rename(out)


def _siblings(out: Path) -> tuple[Path, Path]:
    """Where `out` is built, and where the older `out` waits until the new one is in place."""
    return out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.previous")


def _probe(directory: Path, flag: str, named: Path | None = None) -> None:
    """Create and delete a file in `directory` (or its nearest existing ancestor, where the
    run would create it): the only test of writability that holds for every user."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    shown = named or directory
    if not existing.is_dir():
        raise FinetraceError(f"{flag} {shown}: {existing} is a file, not a directory; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise FinetraceError(
            f"{flag} {shown}: cannot write in {existing} ({error.strerror or error}); choose a writable path"
        ) from None
