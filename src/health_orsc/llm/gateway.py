"""All model calls go through here (docs/architecture.md, principle 3).

One event loop on a background thread owns every client, semaphore and the
cache handle, so stages running in several Prefect worker threads share one
concurrency bound per endpoint. Sync code calls `gateway.run(coro)`.

Requests are made with the `openai` package: `openai.AsyncOpenAI` (or
`AsyncAzureOpenAI` for an endpoint with `azure_api_version`) makes the key and the
headers, and the requests go out over aiohttp, the library under openai's own aiohttp
transport (Azure's through the client itself), with proxies (HTTPS_PROXY, NO_PROXY)
and TLS as in other openai-based tools. The client's own retries are off: the gateway
keeps its cache, bounds, coalescing of identical requests and its own retry policy
(`llm/retry.py`). A reply is stored in the request
cache only once it has been validated (`llm/replies.py`); the cache is read and written
off the loop (`llm/cache_io.py`); calls are counted per role (`llm/accounting.py`).

Per-call CPU in this one loop is what caps a build against a fast endpoint
(bench/, figures 1 and 10): each request's body is built once and posted through an
aiohttp session (llm/retry.py, Poster; the typed `chat.completions.create` spends several
times the CPU building params and response models).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import gc
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sized
from typing import Any, TypeVar

import httpx2
import numpy as np
import openai

from health_orsc.cache.requests import CachedCall, RequestCache
from health_orsc.core.config import BuildConfig, EndpointConfig
from health_orsc.core.records import content_id
from health_orsc.llm import accounting
from health_orsc.llm.accounting import Usage
from health_orsc.llm.cache_io import CacheReader, CacheWriter
from health_orsc.llm.embedded import EmbeddedServer
from health_orsc.llm.replies import ChatResult, choice_logprobs, parse_embeddings, parse_reply
from health_orsc.llm.request import ChatRequest, response_format
from health_orsc.llm.retry import LLMError, Poster, Retryable, backoff_s, post
from health_orsc.runtime.progress import note

T = TypeVar("T")

# objects allocated between young-generation collections while the gateway runs
YOUNG_GC_THRESHOLD = 200_000


class Gateway:
    """Roles -> endpoints, bounded concurrency per endpoint, retries, request cache.
    Calls and cache hits are counted into the `Usage` passed to `run`."""

    def __init__(self, config: BuildConfig, cache: RequestCache | None = None):
        self.config = config
        self.cache = cache or RequestCache.open(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-gateway",
                                        daemon=True)
        # running before the first submit: until then is_running() is False, and a task
        # that got this gateway at once was told it was closed (seen in CI, under load)
        running = threading.Event()
        self._loop.call_soon(running.set)
        self._thread.start()
        running.wait()
        self._writer = CacheWriter(self.cache, self._loop)
        self._reader = CacheReader(self.cache, self._loop)
        self._clients: dict[str, Poster] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._sampling_fields: dict[tuple[str, int], dict[str, Any]] = {}
        self._admission: asyncio.Semaphore | None = None  # made on the loop, by gather()
        self._in_flight: dict[str, asyncio.Future] = {}  # request key -> its answer
        self._start_locks: dict[str, asyncio.Lock] = {}
        self._servers: dict[str, EmbeddedServer] = {}
        self._frozen = False  # gc.freeze() done (submit)

    # -- sync bridge -------------------------------------------------------
    def run(self, coro, usage: Usage | None = None):
        """Run a coroutine on the gateway's loop and wait for its result; the calls
        and cache hits it makes are added to `usage`."""
        return self.submit(coro, usage).result()

    def submit(self, coro, usage: Usage | None = None) -> concurrent.futures.Future:
        """Start a coroutine on the gateway's loop (see `run`); its future."""
        if not self._loop.is_running():
            coro.close()
            raise LLMError("the LLM gateway is closed; no further model calls in this build")
        # Everything alive at the first call (modules, the embedding model, inputs) lives
        # for the whole build: move it out of the cyclic collector's way. Otherwise each
        # full collection scans it all and stalls this loop for ~0.3 s every ~2 s at paper
        # scale (bench/). Once: a freeze at every call also froze the calls then in flight
        # on other threads (asyncio tasks, futures, their frames: cycles the collector then
        # never freed), ~38,000 objects a minute in a 100k build's jury stage, 6.5 GB of
        # RSS by the end of a million's (bench/README.md).
        if not self._frozen:
            gc.freeze()
            self._frozen = True
        # Each call allocates a few hundred short-lived objects (its request, the reply's
        # models); at the default threshold (700) the young generation is
        # collected every few calls, and those collections held the jury stage at 0.75 of
        # endpoint capacity at paper scale. With this threshold: 0.93 (bench/README.md).
        if gc.get_threshold()[0] < YOUNG_GC_THRESHOLD:
            gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])

        async def counted():
            accounting.counting(usage)
            return await coro

        return asyncio.run_coroutine_threadsafe(counted(), self._loop)

    def close(self) -> None:
        async def _close():
            for client in self._clients.values():
                await client.close()
        if self._loop.is_running():
            self.run(_close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._writer.close()
        self._reader.close()
        for server in self._servers.values():
            server.stop()
        self.cache.close()

    async def gather(self, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run a stage's jobs (each renders its prompts, then makes calls) with a bounded
        number in progress across every stage task of this process: twice the requests
        all endpoints take in flight. Every slot stays busy, and prompts are rendered
        just in time instead of all up front, which would hold the loop for seconds
        at paper scale before the first request went out. Results in job order.

        As many workers as there are slots take the jobs one after another from `jobs`
        (any iterable), so memory holds the workers and the results, not a task per job.
        After a job fails no further job starts; the ones running finish, then the first
        failure is raised. A job must not call `gather` itself (it would wait for a slot
        it may be holding)."""
        slots = 2 * sum(ep.max_concurrency for ep in self.config.endpoints.values())
        if self._admission is None:
            self._admission = asyncio.Semaphore(slots)
        admission = self._admission
        queue = enumerate(jobs)  # shared: each worker takes the next job on the loop's thread
        results: dict[int, T] = {}
        failures: list[BaseException] = []

        async def worker() -> None:
            for i, job in queue:
                async with admission:
                    if failures:
                        return
                    try:
                        results[i] = await job()
                    except Exception as err:  # noqa: BLE001 - raised below, after the others stop
                        failures.append(err)

        workers = min(slots, len(jobs)) if isinstance(jobs, Sized) else slots
        await asyncio.gather(*(worker() for _ in range(workers)))
        if failures:
            raise failures[0]
        return [results[i] for i in range(len(results))]

    # -- calls ---------------------------------------------------------------
    async def chat(self, role_name: str, messages: list[dict[str, str]],
                   schema: dict[str, Any] | None = None, seed_offset: int = 0,
                   top_logprobs: int | None = None, finish_reason: bool = False) -> ChatResult:
        """One chat completion for a role; from the cache when the same request was made before.

        `seed_offset` varies the sampling seed (and so the cache key) between
        variants of the same prompt. `top_logprobs` asks for the reply's token
        log-probabilities (ChatResult.logprobs); `finish_reason` for why the model
        stopped (ChatResult.finish_reason), which a cache hit reads from the stored reply.
        """
        role = self.config.roles[role_name]
        ep = self.config.endpoints[role.endpoint]
        request = ChatRequest(ep.identity, role.model, messages, self._sampling(role_name, seed_offset),
                              response_format(ep, schema), top_logprobs)
        key = request.key
        if key in self._in_flight:
            # The same request is already being looked up or sent: wait for it rather than
            # send it twice (counted as a cache hit: its answer is the one that lands in
            # the cache).
            answer, cached = await asyncio.shield(self._in_flight[key]), True
        else:
            future = self._in_flight[key] = self._loop.create_future()
            try:
                hit = await self._reader.lookup(key, with_choice=finish_reason or top_logprobs is not None)
                cached = hit is not None
                answer = (hit[0], *_choice_details(hit[1], top_logprobs)) if cached else \
                    await self._call(role_name, role.endpoint, ep, request)
            except BaseException as err:
                future.set_exception(err)
                future.exception()  # retrieved: nobody may be waiting
                raise
            finally:
                del self._in_flight[key]
            future.set_result(answer)
        accounting.count(role_name, cached=cached)
        return ChatResult(answer[0], key, cached, *answer[1:])

    async def embed(self, role_name: str, texts: list[str]) -> np.ndarray:
        """One /v1/embeddings request for a role: the texts' vectors, L2-normalised, in
        order (float32, one row per text). Bounded, retried and counted like a chat call;
        not in the request cache: the dedup stage keeps vectors in the embedding cache."""
        role = self.config.roles[role_name]
        ep = self.config.endpoints[role.endpoint]
        body = {"model": role.model, "input": texts, "encoding_format": "float"}
        _, reply, _ = await self._send(role.endpoint, ep, "/embeddings", body,
                                       lambda raw: parse_embeddings(raw, len(texts)))
        accounting.count(role_name, cached=False)
        rows = sorted(reply.data, key=lambda d: d.index)
        vectors = np.asarray([d.embedding for d in rows], dtype="float32")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    async def _send(self, ep_name: str, ep: EndpointConfig, path: str, body: dict[str, Any],
                    parse: Callable[[bytes], T]) -> tuple[bytes, T, float]:
        """POST `body` to the endpoint within its concurrency bound, with the retry policy:
        the raw reply, `parse` of it (which raises Retryable for a reply it cannot use) and
        the successful attempt's latency."""
        where = f"endpoint '{ep_name}' ({ep.identity})"
        async with self._semaphore(ep_name):
            poster = await self._client(ep_name)
            for attempt in range(ep.max_retries + 1):
                started = time.monotonic()
                try:
                    raw = await post(poster, path, body, where)
                    return raw, parse(raw), time.monotonic() - started
                except Retryable as err:
                    if attempt == ep.max_retries:
                        raise LLMError(f"{where} failed after {attempt + 1} attempts: {err}") from err
                    await asyncio.sleep(backoff_s(attempt, err.wait_s))
        raise AssertionError("unreachable")

    async def _call(self, role_name: str, ep_name: str, ep: EndpointConfig,
                    request: ChatRequest) -> tuple[str, list | None, str | None]:
        raw, reply, latency = await self._send(ep_name, ep, "/chat/completions", request.body(), parse_reply)
        choice = reply.choices[0]
        text = choice.message.content or ""
        await self._writer.store(CachedCall(request.key, request.endpoint, request.model, request.record_json,
                                            raw.decode("utf-8", errors="replace"), text, reply.usage,
                                            latency, role_name))
        # logprobs is not a declared field of a choice: it is among its extra fields
        logprobs = None if request.top_logprobs is None else choice_logprobs(choice.model_extra or {})
        return text, logprobs, choice.finish_reason

    def _sampling(self, role_name: str, seed_offset: int) -> dict[str, Any]:
        """The role's request fields (RoleConfig.request_fields) with its seed moved by
        `seed_offset`: made once per role and offset (a pydantic model per call cost the
        loop more). Shared: never modified."""
        key = (role_name, seed_offset)
        if key not in self._sampling_fields:
            self._sampling_fields[key] = self.config.roles[role_name].request_fields(seed_offset)
        return self._sampling_fields[key]

    def _semaphore(self, ep_name: str) -> asyncio.Semaphore:
        if ep_name not in self._semaphores:
            self._semaphores[ep_name] = asyncio.Semaphore(self.config.endpoints[ep_name].max_concurrency)
        return self._semaphores[ep_name]

    async def _client(self, ep_name: str) -> Poster:
        if ep_name in self._clients:
            return self._clients[ep_name]
        lock = self._start_locks.setdefault(ep_name, asyncio.Lock())
        async with lock:
            if ep_name not in self._clients:
                ep = self.config.endpoints[ep_name]
                if ep.embedded:
                    # Started lazily: a fully cached build never starts the server.
                    server = EmbeddedServer(ep.n_ctx, self.config.outputs_dir, ep.startup_timeout_s)
                    self._servers[ep_name] = server
                    note(f"starting the embedded model server for endpoint '{ep_name}' (llama.cpp)")
                    started = time.monotonic()
                    base_url = await asyncio.to_thread(server.start)
                    note(f"embedded model server ready in {time.monotonic() - started:.1f} s")
                else:
                    base_url = ep.base_url
                self._clients[ep_name] = make_client(ep, base_url)
        return self._clients[ep_name]


def _choice_details(choice: dict[str, Any] | None,
                    top_logprobs: int | None) -> tuple[list | None, str | None]:
    """(logprobs if asked for, finish_reason) of a stored reply's choice; (None, None)
    when the lookup did not read it."""
    if choice is None:
        return None, None
    return (None if top_logprobs is None else choice_logprobs(choice)), choice.get("finish_reason")


def make_client(ep: EndpointConfig, base_url: str) -> Poster:
    """An openai client for one endpoint (its headers; Azure's calls) and the aiohttp session
    to post through (retry.Poster): no retries of its own (the gateway's policy applies), a
    connection pool as large as the endpoint's concurrency bound."""
    api_key = os.environ.get(ep.api_key_env, "") if ep.api_key_env else "not-needed"
    common = {"api_key": api_key, "max_retries": 0, "timeout": ep.timeout_s}
    if ep.azure_api_version:
        n = ep.max_concurrency
        limits = httpx2.Limits(max_connections=n, max_keepalive_connections=n)
        http_client = openai.DefaultAioHttpClient(timeout=ep.timeout_s, limits=limits)
        client = openai.AsyncAzureOpenAI(base_url=base_url, api_version=ep.azure_api_version,
                                         http_client=http_client, **common)
    else:
        client = openai.AsyncOpenAI(base_url=base_url, **common)
    return Poster(client, ep.timeout_s, ep.max_concurrency)


_gateways: dict[str, Gateway] = {}
_gateways_lock = threading.Lock()


def gateway_for(config: BuildConfig) -> Gateway:
    """One gateway per config content per process, shared by every task thread. In a
    long-lived Dask worker an edited config file gets a new gateway (its endpoints and
    models), not the one made for the file's old content."""
    key = content_id([str(config.source), config.content()])
    with _gateways_lock:
        if key not in _gateways:
            _gateways[key] = Gateway(config)
        return _gateways[key]


def close_gateways() -> None:
    """Stop embedded servers and close clients of this process's gateways."""
    with _gateways_lock:
        for gw in _gateways.values():
            gw.close()
        _gateways.clear()


atexit.register(close_gateways)  # once per process, not once per build
