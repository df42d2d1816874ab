"""Embedding alongside generate: with an embedding endpoint (`dedup.embedder`), each chunk
of prompts a generate task writes goes to the embedding cache while the task's next calls
are made, so embedding ends with the generate stage, not minutes after it (bench/README.md:
286 s after a million candidates' generate).

The embedding calls come from a process of their own when the embedder role has an
endpoint no other role uses: parsing vectors and writing the cache then takes no time
from the event loop that makes generate's calls (bench/README.md: generate fell from 0.96
to 0.89 of the endpoint's capacity at a million candidates with them in one process).
One such process serves every generate task of a build process, and ends with the last,
or within half a second of a build killed outright, even while it is still starting
(runtime/orphan.py).
Otherwise (an endpoint shared with other roles, whose `max_concurrency` holds per process;
the embedded llama.cpp server; a daemonic process such as a Dask worker, which may not
start one) a thread of the task's own process embeds.

Example:
    with embedder_alongside(config, gateway) as submit:
        for chunk in embedded_alongside(chunks, submit, usage): ...
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

from health_orsc.build.dedup import Embedder, PoolTexts
from health_orsc.cache.embeddings import EmbeddingCache
from health_orsc.core.config import BuildConfig
from health_orsc.core.records import Decision, content_id
from health_orsc.llm import Gateway, Usage
from health_orsc.runtime.orphan import start_child

EMBED_AHEAD = 4  # chunks generated and waiting for their embedding, at most, per task

Submit = Callable[[list[str]], Future]  # texts -> a Future of the Usage of embedding them


def embed_texts(config: BuildConfig, cache: EmbeddingCache, gateway: Gateway, texts: list[str]) -> Usage:
    """The texts into the embedding cache (those not there yet); the embedder role's calls."""
    embedder = Embedder.for_config(config, cache, gateway=gateway)
    embedder.encode(texts)
    return embedder.usage


def own_process(config: BuildConfig) -> bool:
    """Whether the embedder role's calls may come from a process of their own."""
    role = config.dedup.embedder
    endpoint = config.roles[role].endpoint
    shared = any(r.endpoint == endpoint for name, r in config.roles.items() if name != role)
    return not (shared or config.endpoints[endpoint].embedded or multiprocessing.current_process().daemon)


@contextlib.contextmanager
def embedder_alongside(config: BuildConfig, gateway: Gateway) -> Iterator[Submit | None]:
    """How a generate task embeds its chunks (`embedded_alongside`): None with the local
    model, which would take the cores from generate's calls (the category's embed task
    embeds them after generate)."""
    if config.dedup.embedder is None:
        yield None
    elif own_process(config):
        with _shared_process(config) as pool:
            yield partial(pool.submit, _embed_in_process)
    else:
        cache = EmbeddingCache.open(config)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="embed-alongside") as pool:
                yield partial(pool.submit, embed_texts, config, cache, gateway)
        finally:
            cache.close()


def embedded_alongside(chunks: Iterable[list[Decision]], submit: Submit,
                       usage: Usage) -> Iterator[list[Decision]]:
    """The chunks, passed on as they come, while each one's usable prompts (the texts the
    embed stage would: `PoolTexts`) are embedded; at most EMBED_AHEAD chunks wait for it,
    and the last is embedded before this ends. The embedding calls are counted into
    `usage`; an embedding that fails raises here."""
    waiting: deque[Future] = deque()
    try:
        for chunk in chunks:
            waiting.append(submit(list(PoolTexts().rows(d.candidate for d in chunk if d.kept))))
            while len(waiting) > EMBED_AHEAD:
                usage.add(waiting.popleft().result())
            yield chunk
        while waiting:
            usage.add(waiting.popleft().result())
    finally:
        for future in waiting:  # a failed task: what has not started is not embedded
            future.cancel()


_pools: dict[str, list] = {}  # config content -> [its embedding process's pool, tasks using it]
_pools_lock = threading.Lock()


@contextlib.contextmanager
def _shared_process(config: BuildConfig) -> Iterator[ProcessPoolExecutor]:
    key = content_id([str(config.source), config.content()])
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None:
            # the config pickled: unpickled after the watch on the build has started (orphan.py)
            pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), start_child,
                                       (os.getpid(), f"{__name__}:_start_in_process", pickle.dumps(config)))
            pool.submit(int)  # start it now: its imports overlap the first chunk's calls
            entry = _pools[key] = [pool, 0]
        entry[1] += 1
    try:
        yield entry[0]
    finally:
        with _pools_lock:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _pools[key]
        if last:
            try:
                entry[0].submit(_stop_in_process).result()
            except Exception:  # a broken pool: its process is gone already
                pass
            finally:
                entry[0].shutdown(cancel_futures=True)


# In the embedding process: its config, embedding cache and gateway.
_state: tuple[BuildConfig, EmbeddingCache, Gateway] | None = None


def _start_in_process(config: bytes) -> None:
    global _state
    from health_orsc.llm.gateway import gateway_for

    config = pickle.loads(config)  # noqa: S301 - pickled by this build's own process
    _state = (config, EmbeddingCache.open(config), gateway_for(config))


def _embed_in_process(texts: list[str]) -> Usage:
    config, cache, gateway = _state
    return embed_texts(config, cache, gateway, texts)


def _stop_in_process() -> None:
    global _state
    from health_orsc.llm.gateway import close_gateways

    _config, cache, _gateway = _state
    _state = None
    cache.close()
    close_gateways()
