"""The retry policy of every model call: which failures are worth another attempt and how
long to wait before it.

Connection errors, timeouts, HTTP 408, 409, 429 and 5xx, and replies that are not what
was asked for (a proxy's HTML page with status 200, a truncated body: see
`llm/replies.py`) are retried with exponential backoff and jitter that honours
`retry-after-ms` and `Retry-After` (seconds or an HTTP date). Any other status is final.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx2
import openai
import yarl

from health_orsc.core.errors import Resumable, shorten

RETRYABLE_STATUS = {408, 409, 429}  # and every 5xx
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0  # a server may ask for longer; we wait at most this between attempts


class LLMError(Resumable):
    """An endpoint failed for good: retries exhausted, or a non-retryable answer."""


class Retryable(Exception):
    """One attempt failed in a way another attempt may not."""

    def __init__(self, problem: str, wait_s: float | None = None):
        super().__init__(problem)
        self.wait_s = wait_s  # what the server asked for (Retry-After), if anything


def retry_after_s(headers: Mapping[str, str]) -> float | None:
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


class Poster:
    """POSTs to one endpoint. The openai client makes the headers (its authentication and
    identity headers, merged once) and each request goes out through an aiohttp session
    (the library under the openai client's own aiohttp transport) with a connection pool as
    large as the endpoint's concurrency bound, the proxy HTTPS_PROXY / NO_PROXY name and
    httpx's TLS defaults. Per-call CPU is what caps a build against a fast endpoint
    (bench/README.md, figure 10): through openai's `client.post` a juror call cost 0.73-0.86
    ms of CPU, through its HTTP client's `post` 0.60-0.62 and `send` 0.53-0.56 (a Request,
    two Headers and a streamed Response per call); aiohttp's own session cost a third less
    than `send` (0.21 against 0.31-0.34 ms, 6,000 calls against bench/fake_endpoint.py, the
    two run in turn on a 2-core AMD EPYC machine, 2026-12-07). To Azure, through the openai
    client's `post`, which reads the body's `model` to build the deployment's URL."""

    def __init__(self, client: openai.AsyncOpenAI, timeout_s: float, max_connections: int):
        self.client = client
        self.azure = isinstance(client, openai.AsyncAzureOpenAI)
        self.base = str(client.base_url).rstrip("/")
        sent = {**client.default_headers, **client.auth_headers, "Content-Type": "application/json"}
        self.headers = {k: v for k, v in sent.items() if isinstance(v, str)}  # not openai's Omit
        # as the openai client's own: each phase (pool, connect, each read) within timeout_s
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=timeout_s,
                                             sock_read=timeout_s)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The endpoint's session, made on first use (on the loop that sends)."""
        if self._session is None:
            # the proxy looked up once (trust_env would look it up, and ~/.netrc, on a
            # thread per request: two thread hops per call)
            try:
                proxy, proxy_auth = aiohttp.helpers.get_env_proxy_for_url(yarl.URL(self.base))
            except LookupError:
                proxy, proxy_auth = None, None
            connector = aiohttp.TCPConnector(limit=self.max_connections, ssl=httpx2.create_ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, headers=self.headers,
                                                  timeout=self.timeout, proxy=proxy, proxy_auth=proxy_auth,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.client.close()


async def post(poster: Poster, path: str, body: dict[str, Any], where: str) -> bytes:
    """One attempt: POST `body` and return the reply's bytes; Retryable for a failure
    worth another attempt, LLMError (naming `where`) for one that is final. The body goes
    as JSON bytes made here (the client's own encoder costs more per call)."""
    if poster.azure:
        return await _post_azure(poster.client, path, body, where)
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        async with poster.session().post(poster.base + path, data=content) as response:
            raw = await response.read()
            status, headers = response.status, response.headers
    except (aiohttp.ClientError, TimeoutError) as err:  # timeouts included
        raise Retryable(connection_problem(err)) from err
    if status >= 400:
        _status_failure(status, error_message(raw), headers, where)
    return raw


def error_message(content: bytes) -> str:
    """What an error reply says: its JSON `error.message` (OpenAI's and vLLM's form), else its text."""
    text = content.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text
    error = data.get("error", data) if isinstance(data, dict) else data
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else text


def _status_failure(status: int, message: str, headers: Mapping[str, str], where: str) -> None:
    problem = f"HTTP {status}: {shorten(message, 200)}"
    if status in RETRYABLE_STATUS or status >= 500:
        raise Retryable(problem, retry_after_s(headers))
    raise LLMError(f"{where} refused the request with {problem}")


async def _post_azure(client: openai.AsyncOpenAI, path: str, body: dict[str, Any], where: str) -> bytes:
    try:
        response = await client.post(path, cast_to=httpx2.Response, body=body)
    except openai.APIConnectionError as err:  # timeouts included
        raise Retryable(connection_problem(err)) from err
    except openai.APIStatusError as err:
        status = err.status_code
        _status_failure(status, err.message.removeprefix(f"Error code: {status} - "), err.response.headers,
                        where)
    return response.content


def connection_problem(err: BaseException) -> str:
    """What went wrong on the way to the endpoint, from the innermost cause: a refused or
    reset connection, a timeout, or a reply cut off."""
    chain = []
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__ or err.__context__
    refused = next((e for e in reversed(chain) if isinstance(e, OSError) and not isinstance(e, TimeoutError)),
                   None)
    if refused is not None:
        return f"connection error: {shorten(str(refused), 200)}"
    if any(isinstance(e, TimeoutError) for e in chain):
        return "timed out"
    innermost = chain[-1]
    return f"connection error: {shorten(str(innermost) or type(innermost).__name__, 200)}"
