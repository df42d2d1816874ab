"""Live progress of long work: per stage, the calls (or texts) done of those expected, cache
hits, rate and time left.

Each stage task of this process tracks itself on the process-wide BOARD (`tracked`): the
gateway's Usage and the embedder report every answer to it. Listeners render the board
(`orsc build`: rich.progress on a terminal, a plain line every few seconds otherwise),
and every tracked task also keeps a Prefect progress artifact up to date, so a run on a
Prefect server, or on Dask workers whose board the CLI cannot see, shows its progress in
the Prefect UI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
TICK_S = 0.5            # how often listeners hear of the board
ARTIFACT_EVERY_S = 5.0  # how often a task's Prefect progress artifact is updated


@dataclass
class TaskProgress:
    """Counters of one stage task (a stage x category). Thread-safe."""

    stage: str
    category: str | None
    unit: str
    total: int = 0
    done: int = 0
    hits: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def expect(self, n: int) -> None:
        with self._lock:
            self.total += n

    def advance(self, n: int = 1, cached: bool = False) -> None:
        with self._lock:
            self.done += n
            self.hits += n if cached else 0
            self.total = max(self.total, self.done)  # repairs: more calls than expected

    def finish(self) -> None:
        with self._lock:
            self.finished = time.monotonic()
            self.total = self.done


@dataclass(frozen=True)
class StageView:
    """One stage, summed over its tasks, at one moment."""

    stage: str
    unit: str
    total: int
    done: int
    hits: int
    elapsed_s: float
    finished: bool

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 and not self.finished else None

    def line(self) -> str:
        head = f"{self.stage}: {self.done:,}/{self.total:,} {self.unit}"
        hits = f" ({self.hits:,} from cache)" if self.hits else ""
        if self.finished:
            return f"{head}{hits}, done in {_duration(self.elapsed_s)}"
        eta = f", {_duration(self.eta_s)} left" if self.eta_s is not None else ""
        return f"{head}{hits}, {self.rate:,.1f}/s{eta}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


Listener = Callable[[list[StageView], list[str]], None]


class ProgressBoard:
    """Every tracked task of this process, summed per stage for whoever listens."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tasks: list[TaskProgress] = []
        self._notes: list[str] = []
        self._listeners: list[Listener] = []
        self._artifacts: dict[int, tuple[TaskProgress, object, list[float]]] = {}
        self._pushing = threading.Lock()  # one artifact update at a time, so none lands out of order
        self._thread: threading.Thread | None = None

    def task(self, stage: str, category: str | None, unit: str = "calls") -> TaskProgress:
        entry = TaskProgress(stage, category, unit)
        with self._lock:
            self._tasks.append(entry)
        self._ensure_ticking()
        return entry

    def note(self, text: str) -> None:
        """A line for the user (what a build decided, what it is starting)."""
        with self._lock:
            self._notes.append(text)
        self._ensure_ticking()

    def views(self) -> list[StageView]:
        now = time.monotonic()
        with self._lock:
            tasks = list(self._tasks)
        stages: dict[str, list[TaskProgress]] = {}
        for t in tasks:
            stages.setdefault(t.stage, []).append(t)
        out = []
        for stage, ts in stages.items():
            finished = all(t.finished is not None for t in ts)
            end = max(t.finished for t in ts) if finished else now
            out.append(StageView(stage, ts[0].unit, sum(t.total for t in ts), sum(t.done for t in ts),
                                 sum(t.hits for t in ts), end - min(t.started for t in ts), finished))
        return out

    def listen(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)
        self._ensure_ticking()

    def clear(self) -> None:
        """Forget tasks, notes and listeners (a new build in the same process)."""
        with self._lock:
            self._tasks.clear()
            self._notes.clear()
            self._listeners.clear()

    def flush(self) -> None:
        """Tell listeners now (and once more at the end of a build)."""
        with self._lock:
            notes, self._notes = self._notes, []
            listeners = list(self._listeners)
        views = self.views()
        for listener in listeners:
            try:
                listener(views, notes)
            except Exception:  # a renderer must never stop a build
                log.exception("progress listener failed")

    def watch_artifact(self, entry: TaskProgress, artifact_id: object) -> None:
        with self._lock:
            self._artifacts[id(entry)] = (entry, artifact_id, [-1.0])

    def push_artifact(self, key: int, last: bool = False) -> None:
        """Update a watched task's artifact; the last push also stops watching it. Pushes are
        serialised: a tick's update sent before a task's last one cannot land after it."""
        with self._pushing:
            with self._lock:
                watched = self._artifacts.pop(key, None) if last else self._artifacts.get(key)
            if watched is not None:
                update_artifact(*watched)

    def _ensure_ticking(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
                self._thread.start()

    def _tick(self) -> None:
        last_artifacts = 0.0
        while True:
            time.sleep(TICK_S)
            self.flush()
            if time.monotonic() - last_artifacts >= ARTIFACT_EVERY_S:
                last_artifacts = time.monotonic()
                with self._lock:
                    watched = list(self._artifacts)
                for key in watched:
                    self.push_artifact(key)


BOARD = ProgressBoard()


def note(text: str) -> None:
    """A line for the user on this process's BOARD. (A function, not BOARD.note: flows call
    it, and Prefect pickles a served flow with what it references; a board does not pickle.)"""
    BOARD.note(text)


def percent(entry: TaskProgress) -> float:
    return 100.0 * entry.done / entry.total if entry.total else 0.0


def update_artifact(entry: TaskProgress, artifact_id: object, last: list[float]) -> None:
    """Push a task's progress to its Prefect artifact when it has moved."""
    value = percent(entry)
    if value == last[0]:
        return
    try:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact_id, progress=value, description=_describe(entry))
        last[0] = value
    except Exception:  # the UI missing an update must never stop a build
        log.debug("could not update progress artifact", exc_info=True)


def _describe(entry: TaskProgress) -> str:
    where = f" {entry.category}" if entry.category else ""
    hits = f", {entry.hits:,} from the request cache" if entry.hits else ""
    return f"{entry.stage}{where}: {entry.done:,} of {entry.total:,} {entry.unit}{hits}"


@contextmanager
def tracked(stage: str, category: str | None = None, unit: str = "calls") -> Iterator[TaskProgress]:
    """Track one stage task on the BOARD and in a Prefect progress artifact (when run
    inside a Prefect task)."""
    entry = BOARD.task(stage, category, unit)
    artifact_id = None
    try:
        from prefect.artifacts import create_progress_artifact
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is not None:
            key = "-".join(filter(None, ["progress", stage, category])).replace("_", "-")
            artifact_id = create_progress_artifact(progress=0.0, key=key, description=_describe(entry))
            BOARD.watch_artifact(entry, artifact_id)
    except Exception:
        log.debug("no progress artifact", exc_info=True)
    try:
        yield entry
    finally:
        entry.finish()
        if artifact_id is not None:
            BOARD.push_artifact(id(entry), last=True)
