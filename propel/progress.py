"""Progress display for long steps (rich), silent when not wanted (tests, pipes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def steps(show: bool, title: str, total: int) -> Iterator[Callable[..., None]]:
    """Yield `advance(description, more=0)` (`more`: steps found to be left beyond `total`); draws a bar of the
    steps when `show` is true."""
    if not show:
        yield lambda _description, more=0: None
        return
    with Progress(TextColumn(f"[bold]{title}[/] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("", total=total)
        def advance(description: str, more: int = 0) -> None:
            bar.update(task, advance=1, description=description, total=bar.tasks[0].total + more)

        yield advance
