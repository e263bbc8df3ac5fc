"""Progress display for long steps (rich), silent when not wanted (tests, pipes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def steps(show: bool, title: str, total: int) -> Iterator[Callable[[str], None]]:
    """Yield `advance(description)`; draws a bar of `total` steps when `show` is true."""
    if not show:
        yield lambda _description: None
        return
    with Progress(TextColumn(f"[bold]{title}[/] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("", total=total)
        yield lambda description: bar.update(task, advance=1, description=description)
