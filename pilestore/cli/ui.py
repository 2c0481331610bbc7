"""The only module that writes to the terminal: progress on stderr, results on stdout.

Progress bars show only on an interactive stderr, never under --quiet or --json, so pipes and CI stay quiet.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text


class DocsPerSecond(ProgressColumn):
    """Documents (or another `unit`) per second, from a `docs` field on the task, else its completed count."""

    def __init__(self, unit: str = "docs") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0
        docs = task.fields.get("docs", task.completed)
        rate = docs / elapsed if elapsed > 0 else 0
        return Text(f"{rate:,.0f} {self.unit}/s", style="progress.data.speed")


def subset_table(title: str, subsets: dict[str, dict[str, Any]], total: dict[str, Any] | None = None) -> Table:
    """Documents, text MB, stored MB and ratio per subset (as `manifest.with_ratios` gives them)."""
    table = Table(title=title, title_justify="left")
    for name in ("subset", "documents", "text MB", "stored MB", "ratio"):
        table.add_column(name, justify="left" if name == "subset" else "right")
    rows = [(name, v, None) for name, v in subsets.items()] + ([("all", total, "bold")] if total else [])
    for name, v, style in rows:
        table.add_row(
            name,
            f"{v['documents']:,}",
            f"{v['text_bytes'] / 1e6:,.2f}",
            f"{v['stored_bytes'] / 1e6:,.2f}",
            f"{v['ratio']}x" if v["ratio"] is not None else "-",
            style=style,
        )
    return table


class Ui:
    """How a command talks: `json_output` prints one JSON document; `quiet` drops progress and notes."""

    def __init__(self, *, json_output: bool = False, quiet: bool = False) -> None:
        self.json_output = json_output
        self.quiet = quiet
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)  # messages stay one line in logs
        self._stdout: TextIO | None = None  # set by reserve_stdout

    def reserve_stdout(self) -> None:
        """Keep standard output for this command's own output: whatever else this process prints there from
        now on goes to standard error (Ray's driver prints a worker's death there, at any time), so that
        `--json` output stays one JSON document."""
        if self._stdout is None:
            self._stdout, sys.stdout = sys.stdout, sys.stderr
            self.out = Console(file=self._stdout, highlight=False, soft_wrap=True)

    @property
    def show_progress(self) -> bool:
        return not (self.quiet or self.json_output) and self.err.is_terminal

    @contextmanager
    def bytes_progress(self, label: str) -> Iterator[tuple[Callable[[int], None], Callable[[int, int], None]]]:
        """(start(total_bytes), advance(bytes, docs)) for work measured in bytes read."""
        if not self.show_progress:
            yield (lambda total: None), (lambda nbytes, ndocs: None)
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            DocsPerSecond(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as progress:
            task = progress.add_task(label, total=None, docs=0)
            docs = 0

            def advance(nbytes: int, ndocs: int) -> None:
                nonlocal docs
                docs += ndocs
                progress.update(task, advance=nbytes, docs=docs)

            yield (lambda total: progress.update(task, total=total)), advance

    @contextmanager
    def docs_progress(self, label: str, total: int, unit: str = "docs") -> Iterator[Callable[[int], None]]:
        """advance(n) for work measured in documents (or spans, samples: `unit`)."""
        if not self.show_progress:
            yield lambda n: None
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            DocsPerSecond(unit),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as progress:
            task = progress.add_task(label, total=total)
            yield lambda n: progress.advance(task, n)

    @contextmanager
    def working(self, label: str) -> Iterator[None]:
        """A spinner with the time spent, for work whose end cannot be told (a library call that reports nothing)."""
        if not self.show_progress:
            yield
            return
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.err, transient=True) as progress:
            progress.add_task(label, total=None)
            yield

    @contextmanager
    def stages(self) -> Iterator[Callable[..., Callable[[int], None]]]:
        """start(label, total, unit="docs") -> advance(n): work in stages, each shown in place of the one before
        it (docs_progress for a total, working() for None). start may be called from another thread; once this
        context has ended (Ctrl-C while that thread works on), it shows nothing more."""
        lock, shown = threading.Lock(), ExitStack()
        ended = False

        def start(label: str, total: int | None, unit: str = "docs") -> Callable[[int], None]:
            with lock:
                shown.close()
                if ended:
                    return lambda n: None
                if total is None:
                    shown.enter_context(self.working(label))
                    return lambda n: None
                return shown.enter_context(self.docs_progress(label, total, unit))

        try:
            yield start
        finally:
            with lock:
                ended = True
                shown.close()

    def emit_json(self, data: Any) -> None:
        (self._stdout or sys.stdout).write(json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    def note(self, message: str, style: str = "dim") -> None:
        if not self.quiet:
            self.err.print(message, style=style, markup=False)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", style="yellow", markup=False)
