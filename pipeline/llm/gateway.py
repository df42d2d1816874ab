"""All model calls go through here (DESIGN.md principle 3).

One event loop on a background thread owns every client, semaphore and the
cache handle, so stages running in several Prefect worker threads share one
concurrency bound per endpoint. Sync code calls `gateway.run(coro)`.

The wire protocol is OpenAI's chat completions (POST {base_url}/chat/completions,
Bearer key), spoken with aiohttp directly. Per-call CPU in this one loop is what
caps a build against a fast endpoint (bench/, figure 1): the openai package
spends ~0.6 ms of CPU per call (request options, httpx2 models; its httpx pool
several ms at 64+ connections), aiohttp ~0.15 ms. Retries follow the openai
client's rules: connection errors, timeouts, HTTP 408, 409, 429 and 5xx.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from pipeline.config import BuildConfig, EndpointConfig
from pipeline.llm.cache import RequestCache, request_key
from pipeline.llm.embedded import EmbeddedServer

RETRYABLE_STATUS = {408, 409, 429}  # and every 5xx
T = TypeVar("T")
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass
class Usage:
    """Model calls made and request-cache hits, per role, for one `Gateway.run`."""

    calls: Counter[str] = field(default_factory=Counter)
    cache_hits: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"calls": dict(self.calls), "cache_hits": dict(self.cache_hits)}


# The Usage of the Gateway.run a coroutine belongs to (tasks it spawns inherit it).
_usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("usage", default=None)


class LLMError(RuntimeError):
    """An endpoint failed for good: retries exhausted, or a non-retryable answer."""


class _Retryable(Exception):
    def __init__(self, problem: str, retry_after: str | None = None):
        super().__init__(problem)
        self.retry_after = retry_after


@dataclass
class _Client:
    session: aiohttp.ClientSession
    url: str  # .../chat/completions
    headers: dict[str, str]


@dataclass(frozen=True)
class ChatResult:
    text: str
    key: str  # request cache key: the handle provenance uses to find the raw call
    cached: bool


def response_format(ep: EndpointConfig, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None or ep.structured_output == "none":
        return None
    if ep.structured_output == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}


def backoff_s(attempt: int, retry_after: str | None = None) -> float:
    """Exponential backoff with full jitter; honours a numeric Retry-After header."""
    if retry_after:
        try:
            return min(BACKOFF_MAX_S, float(retry_after))
        except ValueError:
            pass
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt) * (0.5 + random.random())


class Gateway:
    """Roles -> endpoints, bounded concurrency per endpoint, retries, request cache.
    Calls and cache hits are counted into the `Usage` passed to `run`."""

    def __init__(self, config: BuildConfig, cache: RequestCache | None = None):
        self.config = config
        self.cache = cache or RequestCache(config.outputs_dir / "cache" / "llm.sqlite")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-gateway",
                                        daemon=True)
        self._thread.start()
        self._clients: dict[str, _Client] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._admission: asyncio.Semaphore | None = None  # made on the loop, by gather()
        self._in_flight: dict[str, asyncio.Future] = {}  # request key -> its answer
        self._start_locks: dict[str, asyncio.Lock] = {}
        self._servers: dict[str, EmbeddedServer] = {}

    # -- sync bridge -------------------------------------------------------
    def run(self, coro, usage: Usage | None = None):
        """Run a coroutine on the gateway's loop and wait for its result; the calls
        and cache hits it makes are added to `usage`."""
        if not self._loop.is_running():
            coro.close()
            raise LLMError("the LLM gateway is closed; no further model calls in this build")
        # Everything alive now (modules, the embedding model, inputs) lives for the whole
        # build: move it out of the cyclic collector's way. Otherwise each full collection
        # scans it all and stalls this loop for ~0.3 s every ~2 s at paper scale (bench/).
        gc.freeze()

        async def counted():
            _usage.set(usage)
            return await coro

        return asyncio.run_coroutine_threadsafe(counted(), self._loop).result()

    def close(self) -> None:
        async def _close():
            for client in self._clients.values():
                await client.session.close()
        if self._loop.is_running():
            self.run(_close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
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
                   schema: dict[str, Any] | None = None, seed_offset: int = 0) -> ChatResult:
        """One chat completion for a role; from the cache when the same request was made before.

        `seed_offset` varies the sampling seed (and so the cache key) between
        variants of the same prompt.
        """
        role = self.config.roles[role_name]
        ep_name = role.endpoint
        ep = self.config.endpoints[ep_name]
        request = {"endpoint": ep.identity, "model": role.model, "messages": messages,
                   **role.sampling(seed_offset), "response_format": response_format(ep, schema)}
        key = request_key(request)
        usage = _usage.get()
        hit = self.cache.text(key)
        if hit is None and key in self._in_flight:
            # The same request is already on its way: wait for it rather than send it twice
            # (counted as a cache hit: its answer is the one that lands in the cache).
            hit = await asyncio.shield(self._in_flight[key])
        if hit is not None:
            if usage:
                usage.cache_hits[role_name] += 1
            return ChatResult(hit, key, True)
        future = self._in_flight[key] = self._loop.create_future()
        try:
            text = await self._call(ep_name, ep, key, request)
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: nobody may be waiting
            raise
        finally:
            del self._in_flight[key]
        future.set_result(text)
        if usage:
            usage.calls[role_name] += 1
        return ChatResult(text, key, False)

    async def _call(self, ep_name: str, ep: EndpointConfig, key: str, request: dict[str, Any]) -> str:
        async with self._semaphore(ep_name):
            client = await self._client(ep_name)
            response, latency = await self._create_with_retries(client, ep_name, ep, request)
        try:
            text = response["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise LLMError(f"endpoint '{ep_name}' ({ep.identity}) sent a reply that is not a chat"
                           f" completion: {str(response)[:200]}") from err
        self.cache.put(key, request, response, text, response.get("usage"), latency)
        return text

    async def _create_with_retries(self, client: _Client, ep_name: str, ep: EndpointConfig,
                                   request: dict[str, Any]) -> tuple[dict, float]:
        body = {k: request[k] for k in ("model", "messages", "temperature", "top_p", "max_tokens",
                                         "seed")}
        if request["response_format"] is not None:
            body["response_format"] = request["response_format"]
        data = json.dumps(body)
        where = f"endpoint '{ep_name}' ({ep.identity})"
        for attempt in range(ep.max_retries + 1):
            started = time.monotonic()
            try:
                return await self._post(client, data, where), time.monotonic() - started
            except _Retryable as err:
                if attempt == ep.max_retries:
                    raise LLMError(f"{where} failed after {attempt + 1} attempts: {err}") from err
                await asyncio.sleep(backoff_s(attempt, err.retry_after))
        raise AssertionError("unreachable")

    @staticmethod
    async def _post(client: _Client, data: str, where: str) -> dict:
        try:
            async with client.session.post(client.url, data=data, headers=client.headers) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("retry-after")
        except TimeoutError as err:
            raise _Retryable("timed out") from err
        except aiohttp.ClientError as err:
            raise _Retryable(f"connection error: {type(err).__name__}: {err}") from err
        if status >= 400:
            problem = f"HTTP {status}: {_error_message(raw)}"
            if status in RETRYABLE_STATUS or status >= 500:
                raise _Retryable(problem, retry_after)
            raise LLMError(f"{where} refused the request with {problem}")
        try:
            response = json.loads(raw)
        except ValueError as err:
            raise LLMError(f"{where} answered with something that is not JSON: {raw[:200]!r}") from err
        if not isinstance(response, dict):
            raise LLMError(f"{where} answered with {type(response).__name__}, not a JSON object")
        return response

    def _semaphore(self, ep_name: str) -> asyncio.Semaphore:
        if ep_name not in self._semaphores:
            self._semaphores[ep_name] = asyncio.Semaphore(self.config.endpoints[ep_name].max_concurrency)
        return self._semaphores[ep_name]

    async def _client(self, ep_name: str) -> _Client:
        if ep_name in self._clients:
            return self._clients[ep_name]
        lock = self._start_locks.setdefault(ep_name, asyncio.Lock())
        async with lock:
            if ep_name not in self._clients:
                ep = self.config.endpoints[ep_name]
                if ep.embedded:
                    # Started lazily: a fully cached build never starts the server.
                    server = EmbeddedServer(
                        ep.n_ctx, self.config.outputs_dir / "logs" / "llama-server.log",
                        ep.startup_timeout_s,
                    )
                    self._servers[ep_name] = server
                    base_url = await asyncio.to_thread(server.start)
                else:
                    base_url = ep.base_url
                api_key = os.environ.get(ep.api_key_env, "") if ep.api_key_env else "not-needed"
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=ep.max_concurrency),
                    timeout=aiohttp.ClientTimeout(total=ep.timeout_s))
                self._clients[ep_name] = _Client(
                    session, base_url.rstrip("/") + "/chat/completions",
                    {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
        return self._clients[ep_name]


def _error_message(raw: bytes) -> str:
    """The message of an OpenAI-style error body, or the start of the body."""
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (ValueError, AttributeError):
        pass
    return raw[:200].decode(errors="replace") or "(empty body)"
