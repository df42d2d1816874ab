"""Counting model calls: per role, calls sent and request-cache hits, for the stage task
whose coroutine made them.

`Gateway.run(coro, usage)` runs the coroutine with `usage` as the current one (tasks it
spawns inherit it through a context variable); the gateway counts every answer into
`current()`. With `progress`, every answer also moves the task's live progress bar.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from dataclasses import dataclass, field

from health_orsc.runtime.progress import TaskProgress


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
