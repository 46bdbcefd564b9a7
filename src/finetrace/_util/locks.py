"""File locks that say when they make a run wait."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from rich.console import Console

from finetrace._util.terminal import escape


@contextmanager
def announced_lock(path: str | Path, work: str) -> Iterator[None]:
    """Hold the lock file `path`; when another process holds it, say so once, then wait for it
    (a wait of minutes without a word looks like a hang)."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        Console(stderr=True).print(
            f"waiting for another process to finish {escape(work)} (it holds {escape(str(path))})", highlight=False
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
