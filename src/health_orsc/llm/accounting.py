"""Counting what a flow did: per role, calls sent and request-cache hits, per task and per
stage, with each stage's outcomes and wall time.

`Gateway.run(coro, usage)` runs the coroutine with `usage` as the current one (tasks it
spawns inherit it through a context variable); the gateway counts every answer into it.
With `progress`, every answer also moves the task's live progress bar. A stage task
returns a `TaskResult`; a flow adds its stages' results to a `StageTally`, which the
build and evaluation results report (`BuildResult.stages`, `EvaluationResult.stages`).
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from health_orsc.core.records import StageClock, StageCounts
from health_orsc.runtime.progress import TaskProgress, note


@dataclass
class Usage:
    """Model calls made and request-cache hits, per role, for one stage task; with
    `progress`, every answer also moves the task's live progress."""

    calls: Counter[str] = field(default_factory=Counter)
    cache_hits: Counter[str] = field(default_factory=Counter)
    progress: TaskProgress | None = None

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"calls": dict(self.calls), "cache_hits": dict(self.cache_hits)}

    def expect(self, calls: int) -> None:
        if self.progress:
            self.progress.expect(calls)

    def add(self, other: Usage) -> None:
        """Count `other`'s calls and hits here too (not into the progress)."""
        self.calls.update(other.calls)
        self.cache_hits.update(other.cache_hits)

    def count(self, role: str, cached: bool) -> None:
        (self.cache_hits if cached else self.calls)[role] += 1
        if self.progress:
            self.progress.advance(cached=cached)


_current: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("usage", default=None)


def counting(usage: Usage | None) -> None:
    """Make `usage` the current one of the running coroutine (and the tasks it spawns)."""
    _current.set(usage)


def count(role: str, cached: bool) -> None:
    """Count one answer for `role` into the current Usage, if there is one."""
    usage = _current.get()
    if usage:
        usage.count(role, cached=cached)


class TaskResult(BaseModel):
    """What a stage task returns (and Prefect persists for the next run): the stage file it
    wrote, the outcomes it counted, and the model calls and cache hits it made."""

    path: str
    counts: StageCounts = StageCounts()
    calls: dict[str, int] = {}
    cache_hits: dict[str, int] = {}

    @classmethod
    def of(cls, path: str | Path, counts: StageCounts | None = None,
           usage: Usage | None = None) -> TaskResult:
        return cls(path=str(path), counts=counts or StageCounts(), **(usage.as_dict() if usage else {}))

    def file_missing(self) -> bool:
        """A result from an earlier run whose stage file was deleted since: the task must
        run again (its calls come from the request cache)."""
        return not Path(self.path).exists()


class StageTally:
    """Per stage of one flow run: wall time, tasks (and how many came from Prefect's cache),
    the model calls and request-cache hits this run made, and the stage's outcomes."""

    def __init__(self):
        self.stages: dict[str, StageClock] = {}
        self.counts: dict[str, StageCounts] = {}
        self.calls_by_category: Counter[str] = Counter()

    def add(self, stage: str, started: float, results: list[tuple[TaskResult, bool]],
            categories: list[str] | None = None) -> list[str]:
        """Count a finished stage: each task's result and whether it came from Prefect's
        cache (its calls were made by an earlier run, not this one); `categories` names
        each task's category. The tasks' stage files, in order."""
        calls: Counter[str] = Counter()
        hits: Counter[str] = Counter()
        counts = StageCounts()
        for i, (result, cached) in enumerate(results):
            if not cached:
                calls.update(result.calls)
                hits.update(result.cache_hits)
                if categories:
                    self.calls_by_category[categories[i]] += sum(result.calls.values())
            counts = counts.merge(result.counts)
        self.counts[stage] = counts
        self.record(stage, started, len(results), sum(cached for _, cached in results), calls, hits)
        return [result.path for result, _ in results]

    def record(self, stage: str, started: float, tasks: int, cached: int = 0,
               calls: Counter | None = None, hits: Counter | None = None) -> None:
        """A stage that ended now (`started`: its monotonic clock at the start)."""
        ended = time.monotonic()
        self.stages[stage] = StageClock(
            clock=[started, ended], wall_s=round(ended - started, 3), tasks=tasks, tasks_cached=cached,
            model_calls=dict(calls or {}), cache_hits=dict(hits or {}))
        from_cache = f", {cached} of {tasks} from Prefect's cache" if cached else ""
        made = sum((calls or {}).values())
        note(f"{stage}: finished in {ended - started:.1f} s ({tasks} task{'s' * (tasks != 1)}"
             f"{from_cache}{f', {made:,} model calls' if made else ''})")

    def total(self, field: str) -> dict[str, int]:
        """`model_calls` or `cache_hits`, summed over the stages."""
        out: Counter[str] = Counter()
        for stage in self.stages.values():
            out.update(getattr(stage, field))
        return dict(out)
