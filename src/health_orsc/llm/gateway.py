"""All model calls go through here (docs/architecture.md, principle 3).

One event loop on a background thread owns every client, semaphore and the
cache handle, so stages running in several Prefect worker threads share one
concurrency bound per endpoint. Sync code calls `gateway.run(coro)`.

Requests go out through the `openai` package: `openai.AsyncOpenAI` (or
`AsyncAzureOpenAI` for an endpoint with `azure_api_version`) over its aiohttp
transport (`openai.DefaultAioHttpClient`), so keys, headers, proxies (HTTPS_PROXY,
NO_PROXY) and TLS behave as in every other openai-based tool. The client's own
retries are off: the gateway keeps its cache, bounds, coalescing of identical
requests and this retry policy - connection errors, timeouts, HTTP 408, 409, 429
and 5xx, and replies that are not chat completions (a proxy's HTML page with
status 200, a truncated body), with exponential backoff and jitter that honours
`retry-after-ms` and `Retry-After` (seconds or an HTTP date). A reply is stored in
the request cache only once it has been validated as a chat completion.

Per-call CPU in this one loop is what caps a build against a fast endpoint
(bench/, figure 1): requests use the client's low-level `post` (its typed
`chat.completions.create` spends twice the CPU building params and response models).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import email.utils
import gc
import json
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import numpy as np
import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from health_orsc.cache.requests import CachedCall, RequestCache
from health_orsc.core.config import BuildConfig, EndpointConfig
from health_orsc.core.errors import shorten
from health_orsc.core.records import content_id
from health_orsc.llm.embedded import EmbeddedServer
from health_orsc.llm.request import ChatRequest, response_format
from health_orsc.runtime.progress import TaskProgress, note

RETRYABLE_STATUS = {408, 409, 429}  # and every 5xx
T = TypeVar("T")
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0  # a server may ask for longer; we wait at most this between attempts


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


# The Usage of the Gateway.run a coroutine belongs to (tasks it spawns inherit it).
_usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("usage", default=None)


class LLMError(RuntimeError):
    """An endpoint failed for good: retries exhausted, or a non-retryable answer."""


class _Retryable(Exception):
    def __init__(self, problem: str, wait_s: float | None = None):
        super().__init__(problem)
        self.wait_s = wait_s  # what the server asked for (Retry-After), if anything


@dataclass(frozen=True)
class ChatResult:
    text: str
    key: str  # request cache key: the handle provenance uses to find the raw call
    cached: bool
    # asked for with top_logprobs: per generated token, {token, logprob, top_logprobs: [...]}
    logprobs: list[dict[str, Any]] | None = None


def choice_logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A choice's token log-probabilities (OpenAI's `logprobs.content`), if any."""
    logprobs = choice.get("logprobs") or {}
    return logprobs.get("content") if isinstance(logprobs, dict) else None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    content: str | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: _Message


class ChatCompletionReply(BaseModel):
    """The part of a chat completion the gateway relies on: validated before it is cached."""

    model_config = ConfigDict(extra="allow")
    choices: list[_Choice] = Field(min_length=1)
    usage: dict[str, Any] | None = None


def retry_after_s(headers: httpx2.Headers) -> float | None:
    """The wait a server asks for: `retry-after-ms`, or `retry-after` in seconds or as an
    HTTP date; None if it names none (or nonsense)."""
    for name, unit in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * unit)
            except ValueError:
                pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    return None


def backoff_s(attempt: int, asked_s: float | None = None) -> float:
    """Exponential backoff with jitter, or what the server asked for (up to a bound)."""
    if asked_s is not None:
        return min(RETRY_AFTER_MAX_S, asked_s)
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt) * (0.5 + random.random())


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

    async def lookup(self, key: str, with_logprobs: bool) -> tuple[str, list | None] | None:
        """(text, logprobs) of a stored call, or None; only a call that asked for logprobs
        reads the stored reply (the text alone is what almost every hit needs)."""
        return await self._ask((key, with_logprobs))

    def handle(self, items: list[tuple[str, bool]]) -> list:
        found: dict[str, tuple[str, str | None]] = {}
        for with_logprobs in (False, True):
            keys = [key for key, wants in items if wants is with_logprobs]
            if keys:
                found.update(self.cache.answers(keys, with_response=with_logprobs))
        results = []
        for key, with_logprobs in items:
            hit = found.get(key)
            if hit is None or not with_logprobs:
                results.append(hit and (hit[0], None))
            else:
                choice = (json.loads(hit[1]).get("choices") or [{}])[0]
                results.append((hit[0], choice_logprobs(choice)))
        return results


def _settle(futures: list[asyncio.Future], results: list, error: BaseException | None) -> None:
    for done, result in zip(futures, results, strict=True):
        if not done.done():
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(error)


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
        self._thread.start()
        self._writer = CacheWriter(self.cache, self._loop)
        self._reader = CacheReader(self.cache, self._loop)
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._admission: asyncio.Semaphore | None = None  # made on the loop, by gather()
        self._in_flight: dict[str, asyncio.Future] = {}  # request key -> its answer
        self._start_locks: dict[str, asyncio.Lock] = {}
        self._servers: dict[str, EmbeddedServer] = {}

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
        # Everything alive now (modules, the embedding model, inputs) lives for the whole
        # build: move it out of the cyclic collector's way. Otherwise each full collection
        # scans it all and stalls this loop for ~0.3 s every ~2 s at paper scale (bench/).
        gc.freeze()
        # Each call allocates a few hundred short-lived objects (the openai client's request
        # and response models); at the default threshold (700) the young generation is
        # collected every few calls, and those collections held the jury stage at 0.75 of
        # endpoint capacity at paper scale. With this threshold: 0.93 (bench/README.md).
        if gc.get_threshold()[0] < YOUNG_GC_THRESHOLD:
            gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])

        async def counted():
            _usage.set(usage)
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

    async def gather(self, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run a stage's jobs (each renders its prompts, then makes calls) with a bounded
        number in progress across every stage task of this process: twice the requests
        all endpoints take in flight. Every slot stays busy, and prompts are rendered
        just in time instead of all up front, which would hold the loop for seconds
        at paper scale before the first request went out. Results in job order.
        A job must not call `gather` itself (it would wait for a slot it may be holding)."""
        if self._admission is None:
            self._admission = asyncio.Semaphore(
                2 * sum(ep.max_concurrency for ep in self.config.endpoints.values()))
        admission = self._admission

        async def run(job: Callable[[], Awaitable[T]]) -> T:
            async with admission:
                return await job()

        return list(await asyncio.gather(*(run(job) for job in jobs)))

    # -- calls ---------------------------------------------------------------
    async def chat(self, role_name: str, messages: list[dict[str, str]],
                   schema: dict[str, Any] | None = None, seed_offset: int = 0,
                   top_logprobs: int | None = None) -> ChatResult:
        """One chat completion for a role; from the cache when the same request was made before.

        `seed_offset` varies the sampling seed (and so the cache key) between
        variants of the same prompt. `top_logprobs` asks for the reply's token
        log-probabilities (ChatResult.logprobs).
        """
        role = self.config.roles[role_name]
        ep = self.config.endpoints[role.endpoint]
        request = ChatRequest(ep.identity, role.model, messages, role.sampling(seed_offset),
                              response_format(ep, schema), top_logprobs)
        key = request.key
        usage = _usage.get()
        if key in self._in_flight:
            # The same request is already being looked up or sent: wait for it rather than
            # send it twice (counted as a cache hit: its answer is the one that lands in
            # the cache).
            answer, cached = await asyncio.shield(self._in_flight[key]), True
        else:
            future = self._in_flight[key] = self._loop.create_future()
            try:
                hit = await self._reader.lookup(key, with_logprobs=top_logprobs is not None)
                cached = hit is not None
                answer = hit if cached else await self._call(role_name, role.endpoint, ep, request)
            except BaseException as err:
                future.set_exception(err)
                future.exception()  # retrieved: nobody may be waiting
                raise
            finally:
                del self._in_flight[key]
            future.set_result(answer)
        if usage:
            usage.count(role_name, cached=cached)
        return ChatResult(answer[0], key, cached, answer[1])

    async def embed(self, role_name: str, texts: list[str]) -> np.ndarray:
        """One /v1/embeddings request for a role: the texts' vectors, L2-normalised, in
        order (float32, one row per text). Bounded, retried and counted like a chat call;
        not in the request cache: the dedup stage keeps vectors in the embedding cache."""
        role = self.config.roles[role_name]
        ep = self.config.endpoints[role.endpoint]
        body = {"model": role.model, "input": texts, "encoding_format": "float"}
        _, reply, _ = await self._send(role.endpoint, ep, "/embeddings", body,
                                       lambda raw: _parse_embeddings(raw, len(texts)))
        usage = _usage.get()
        if usage:
            usage.count(role_name, cached=False)
        rows = sorted(reply.data, key=lambda d: d.index)
        vectors = np.asarray([d.embedding for d in rows], dtype="float32")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    async def _send(self, ep_name: str, ep: EndpointConfig, path: str, body: dict[str, Any],
                    parse: Callable[[bytes], T]) -> tuple[bytes, T, float]:
        """POST `body` to the endpoint within its concurrency bound, with the retry policy:
        the raw reply, `parse` of it (which raises _Retryable for a reply it cannot use) and
        the successful attempt's latency."""
        where = f"endpoint '{ep_name}' ({ep.identity})"
        async with self._semaphore(ep_name):
            client = await self._client(ep_name)
            for attempt in range(ep.max_retries + 1):
                started = time.monotonic()
                try:
                    raw = await self._post(client, path, body, where)
                    return raw, parse(raw), time.monotonic() - started
                except _Retryable as err:
                    if attempt == ep.max_retries:
                        raise LLMError(f"{where} failed after {attempt + 1} attempts: {err}") from err
                    await asyncio.sleep(backoff_s(attempt, err.wait_s))
        raise AssertionError("unreachable")

    async def _call(self, role_name: str, ep_name: str, ep: EndpointConfig,
                    request: ChatRequest) -> tuple[str, list | None]:
        raw, reply, latency = await self._send(ep_name, ep, "/chat/completions", request.body(), _parse_reply)
        text = reply.choices[0].message.content or ""
        await self._writer.store(CachedCall(request.key, request.endpoint, request.model, request.record_json,
                                            raw.decode("utf-8", errors="replace"), text, reply.usage,
                                            latency, role_name))
        if request.top_logprobs is None:
            return text, None
        # logprobs is not a declared field of a choice: it is among its extra fields
        return text, choice_logprobs(reply.choices[0].model_extra or {})

    @staticmethod
    async def _post(client: openai.AsyncOpenAI, path: str, body: dict[str, Any], where: str) -> bytes:
        try:
            response = await client.post(path, body=body, cast_to=httpx2.Response)
        except openai.APIConnectionError as err:  # timeouts included
            raise _Retryable(_connection_problem(err)) from err
        except openai.APIStatusError as err:
            status = err.status_code
            problem = f"HTTP {status}: {shorten(err.message, 200)}"
            if status in RETRYABLE_STATUS or status >= 500:
                raise _Retryable(problem, retry_after_s(err.response.headers)) from err
            raise LLMError(f"{where} refused the request with {problem}") from err
        return response.content

    def _semaphore(self, ep_name: str) -> asyncio.Semaphore:
        if ep_name not in self._semaphores:
            self._semaphores[ep_name] = asyncio.Semaphore(self.config.endpoints[ep_name].max_concurrency)
        return self._semaphores[ep_name]

    async def _client(self, ep_name: str) -> openai.AsyncOpenAI:
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


def make_client(ep: EndpointConfig, base_url: str) -> openai.AsyncOpenAI:
    """An openai client for one endpoint: no retries of its own (the gateway's policy
    applies), a connection pool as large as the endpoint's concurrency bound."""
    api_key = os.environ.get(ep.api_key_env, "") if ep.api_key_env else "not-needed"
    limits = httpx2.Limits(max_connections=ep.max_concurrency, max_keepalive_connections=ep.max_concurrency)
    http_client = openai.DefaultAioHttpClient(timeout=ep.timeout_s, limits=limits)
    common = {"api_key": api_key, "max_retries": 0, "timeout": ep.timeout_s, "http_client": http_client}
    if ep.azure_api_version:
        return openai.AsyncAzureOpenAI(base_url=base_url, api_version=ep.azure_api_version, **common)
    return openai.AsyncOpenAI(base_url=base_url, **common)


def _connection_problem(err: BaseException) -> str:
    """What went wrong on the way to the endpoint, from the innermost cause: the aiohttp
    transport reports a refused connection as a timeout."""
    chain = []
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__ or err.__context__
    refused = next((e for e in reversed(chain) if isinstance(e, OSError) and not isinstance(e, TimeoutError)),
                   None)
    if refused is not None:
        return f"connection error: {shorten(str(refused), 200)}"
    return "timed out"


class _Embedding(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    embedding: list[float] = Field(min_length=1)


class EmbeddingsReply(BaseModel):
    """The part of a /v1/embeddings reply the gateway relies on."""

    model_config = ConfigDict(extra="allow")
    data: list[_Embedding]


def _parse_embeddings(raw: bytes, n: int) -> EmbeddingsReply:
    """A reply is used only when it holds one vector per text, all of one size; anything
    else is retried."""
    try:
        reply = EmbeddingsReply.model_validate_json(raw)
    except ValidationError as err:
        text = raw[:200].decode(errors="replace")
        raise _Retryable(f"the reply is not an embeddings list: {text!r}") from err
    if sorted(d.index for d in reply.data) != list(range(n)):
        raise _Retryable(f"the reply holds {len(reply.data)} embeddings for {n} texts")
    if len({len(d.embedding) for d in reply.data}) > 1:
        raise _Retryable("the reply's embeddings differ in size")
    return reply


def _parse_reply(raw: bytes) -> ChatCompletionReply:
    """A reply is used (and cached) only when it is a chat completion; anything else -
    an HTML error page sent with status 200, a cut-off body - is retried."""
    try:
        return ChatCompletionReply.model_validate_json(raw)
    except ValidationError as err:
        text = raw[:200].decode(errors="replace")
        raise _Retryable(f"the reply is not a chat completion: {text!r}") from err


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
