"""One progress bar style for every long loop."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from finetrace._util.distributed import is_main


@contextmanager
def progress_bar(description: str, total: int, status: str = "") -> Iterator[Callable[..., None]]:
    """Yields `advance(amount=1, **fields)`; `status` is a format string over those fields,
    e.g. 'loss {loss:.3f}'."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, disable=not is_main()) as progress:  # one bar per run, not per process
        task = progress.add_task(description, total=total, status="")
        # Without a terminal the bar draws nothing until it ends: a line says the phase began.
        if is_main() and not progress.console.is_terminal:
            progress.console.print(f"{description}: {total} steps ...", highlight=False)

        def advance(amount: float = 1, **fields: object) -> None:
            progress.update(task, advance=amount, status=status.format(**fields) if fields else "")

        yield advance
