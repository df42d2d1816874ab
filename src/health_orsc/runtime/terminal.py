"""What a build shows while it runs: live progress and one line per decision on stderr,
everything logged (Prefect's flow and task runs with their tracebacks, Dask, libraries)
in a log file instead.

On a terminal, progress is a rich.progress bar per stage; otherwise (CI, a pipe, a log
collector) a plain line per running stage every ORSC_PROGRESS_EVERY_S seconds (10).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from health_orsc.runtime.progress import BOARD, StageView

DEFAULT_EVERY_S = 10.0


class PlainProgress:
    """Notes as they come; a line per running stage every `every_s` seconds."""

    def __init__(self, stream: TextIO, every_s: float):
        self.stream = stream
        self.every_s = every_s
        self._last = time.monotonic()

    def __call__(self, views: list[StageView], notes: list[str]) -> None:
        for note in notes:
            print(note, file=self.stream, flush=True)
        running = [v for v in views if not v.finished]
        if running and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            for view in running:
                print(view.line(), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """A bar per stage: done/total, cache hits, rate and time left (or time taken)."""

    def __init__(self, stream: TextIO):
        console = Console(file=stream, markup=False, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description:<8}"), BarColumn(),
            TextColumn("{task.completed:>7,.0f}/{task.total:,.0f} {task.fields[unit]}"),
            TextColumn("{task.fields[status]}"), console=console, transient=False)
        self.tasks: dict[str, TaskID] = {}
        self.progress.start()

    def __call__(self, views: list[StageView], notes: list[str]) -> None:
        for note in notes:
            self.progress.console.print(note)
        for v in views:
            hits = f"{v.hits:,} from cache, " if v.hits else ""
            if v.finished:
                status = f"{hits}done in {v.elapsed_s:.1f} s"
            else:
                eta = f", {v.eta_s:.0f} s left" if v.eta_s is not None else ""
                status = f"{hits}{v.rate:,.1f}/s{eta}"
            fields = {"completed": v.done, "total": max(v.total, 1), "unit": v.unit, "status": status}
            if v.stage not in self.tasks:
                self.tasks[v.stage] = self.progress.add_task(v.stage, **fields)
            else:
                self.progress.update(self.tasks[v.stage], **fields)

    def close(self) -> None:
        self.progress.stop()


def _console_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    """Handlers that write to a console stream (Prefect's console handler, Dask's, plain
    StreamHandlers), on the root logger and every named logger; not file handlers, nor
    in-memory ones (a test's log capture)."""
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    return [(lg, h) for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and not isinstance(getattr(h, "stream", None), io.StringIO)]


@contextmanager
def build_console(log_path: Path, stream: TextIO | None = None) -> Iterator[Path]:
    """For the duration of a build: logging goes to `log_path`, progress to `stream`."""
    stream = stream or sys.stderr
    log_path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    swapped = _console_handlers()
    for logger, handler in swapped:
        logger.removeHandler(handler)
        if to_file not in logger.handlers and (logger is logging.getLogger() or not logger.propagate):
            logger.addHandler(to_file)
    if to_file not in logging.getLogger().handlers:
        logging.getLogger().addHandler(to_file)
    every_s = float(os.environ.get("ORSC_PROGRESS_EVERY_S", DEFAULT_EVERY_S))
    renderer = RichProgress(stream) if stream.isatty() else PlainProgress(stream, every_s)
    BOARD.clear()
    BOARD.listen(renderer)
    try:
        yield log_path
    finally:
        BOARD.flush()
        renderer.close()
        BOARD.clear()
        for logger in {lg for lg, _ in swapped} | {logging.getLogger()}:
            logger.removeHandler(to_file)
        for logger, handler in swapped:
            logger.addHandler(handler)
        to_file.close()
