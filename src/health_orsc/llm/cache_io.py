"""The request cache as the gateway's loop sees it: reads and writes batched on their own
threads, so the loop never waits on the database.

One query or commit per batch instead of one per call: a commit per call cost the loop
~0.1 ms, as much as the call itself, and a lookup on the loop would hold it for a round
trip to a PostgreSQL server (bench/, figure 9).
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from typing import Any

from health_orsc.cache.requests import CachedCall, RequestCache


class _Batches:
    """A thread that takes (item, future) pairs, many at a time, off the gateway's loop:
    `handle` gets a batch of items and returns their results (or raises: every future of
    the batch gets the error). One query or commit per batch instead of one per call, and
    the loop never waits on the database."""

    MAX_BATCH = 500

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def _ask(self, item: Any) -> Any:
        done = self.loop.create_future()
        self._queue.put((item, done))
        return await done

    def handle(self, items: list) -> list:
        raise NotImplementedError

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            try:
                results, error = self.handle([item for item, _ in batch]), None
            except Exception as err:  # a full disk, a dead database: each waiting call fails
                results, error = [None] * len(batch), err
            self.loop.call_soon_threadsafe(_settle, [done for _, done in batch], results, error)


class CacheWriter(_Batches):
    """Writes answered calls to the request cache, many per commit (a commit per call cost
    the gateway's loop ~0.1 ms, as much as the call itself). `store` returns once the call
    is committed, so a completed call survives a kill."""

    def __init__(self, cache: RequestCache, loop: asyncio.AbstractEventLoop):
        self.cache = cache
        super().__init__("llm-cache-writer", loop)

    async def store(self, call: CachedCall) -> None:
        await self._ask(call)

    def handle(self, items: list[CachedCall]) -> list:
        self.cache.put_many(items)
        return [None] * len(items)


class CacheReader(_Batches):
    """Looks calls up in the request cache, many keys per query: a lookup on the loop
    would hold it for a round trip to a PostgreSQL server (bench/, figure 9)."""

    def __init__(self, cache: RequestCache, loop: asyncio.AbstractEventLoop):
        self.cache = cache
        super().__init__("llm-cache-reader", loop)

    async def lookup(self, key: str, with_choice: bool) -> tuple[str, dict | None] | None:
        """(text, the stored reply's first choice if `with_choice`) of a stored call, or
        None; only a call that needs the choice (its logprobs, its finish reason) reads the
        stored reply: the text alone is what almost every hit needs."""
        return await self._ask((key, with_choice))

    def handle(self, items: list[tuple[str, bool]]) -> list:
        found: dict[str, tuple[str, str | None]] = {}
        for with_choice in (False, True):
            keys = [key for key, wants in items if wants is with_choice]
            if keys:
                found.update(self.cache.answers(keys, with_response=with_choice))
        results = []
        for key, with_choice in items:
            hit = found.get(key)
            if hit is None or not with_choice:
                results.append(hit and (hit[0], None))
            else:
                results.append((hit[0], (json.loads(hit[1]).get("choices") or [{}])[0]))
        return results


def _settle(futures: list[asyncio.Future], results: list, error: BaseException | None) -> None:
    for done, result in zip(futures, results, strict=True):
        if not done.done():
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(error)
