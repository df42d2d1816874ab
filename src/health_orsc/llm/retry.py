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
from typing import Any

import httpx2
import openai

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


class Poster:
    """POSTs to one endpoint. Through the openai client's own HTTP client, with the HTTP
    client's and the openai client's headers (its authentication included) merged once, and
    each request built here and handed to the HTTP client's `send`: openai's per-request
    options and header merging cost about half the gateway's CPU per call (3,000 juror calls
    against bench/fake_endpoint.py, 2026-12-06: 0.73-0.86 ms through `client.post`, 0.40-0.44
    ms through the HTTP client's `post`), and that `post`'s merging of the headers again
    another eighth (6,000 calls on another machine, 2026-12-07: 0.60-0.62 ms through `post`,
    0.53-0.56 ms through `send`). To Azure,
    through the openai client's `post`, which reads the body's `model` to build the
    deployment's URL."""

    def __init__(self, client: openai.AsyncOpenAI, http_client: httpx2.AsyncClient):
        self.client, self.http = client, http_client
        self.azure = isinstance(client, openai.AsyncAzureOpenAI)
        self.base = str(client.base_url).rstrip("/")
        sent = {**http_client.headers, **client.default_headers, **client.auth_headers,
                "Content-Type": "application/json"}
        self.headers = httpx2.Headers({k: v for k, v in sent.items() if isinstance(v, str)})  # not Omit
        self.extensions = {"timeout": http_client.timeout.as_dict()}

    async def close(self) -> None:
        await self.client.close()


async def post(poster: Poster, path: str, body: dict[str, Any], where: str) -> bytes:
    """One attempt: POST `body` and return the reply's bytes; Retryable for a failure
    worth another attempt, LLMError (naming `where`) for one that is final. The body goes
    as JSON bytes made here (the client's own encoder costs more per call)."""
    if poster.azure:
        return await _post_azure(poster.client, path, body, where)
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        request = httpx2.Request("POST", poster.base + path, content=content, headers=poster.headers,
                                 cookies=poster.http.cookies or None, extensions=poster.extensions)
        response = await poster.http.send(request)
    except httpx2.TransportError as err:  # timeouts included
        raise Retryable(connection_problem(err)) from err
    status = response.status_code
    if status >= 400:
        _status_failure(status, error_message(response.content), response.headers, where)
    return response.content


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


def _status_failure(status: int, message: str, headers: httpx2.Headers, where: str) -> None:
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
