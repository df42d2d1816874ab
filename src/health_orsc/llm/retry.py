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


async def post(client: openai.AsyncOpenAI, path: str, body: dict[str, Any], where: str) -> bytes:
    """One attempt: POST `body` and return the reply's bytes; Retryable for a failure
    worth another attempt, LLMError (naming `where`) for one that is final. The body goes
    as JSON bytes made here (the client's own encoder costs more per call), except to
    Azure, whose client reads the body's `model` to build the deployment's URL."""
    sent = ({"body": body} if isinstance(client, openai.AsyncAzureOpenAI)
            else {"content": json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()})
    try:
        response = await client.post(path, cast_to=httpx2.Response, **sent)
    except openai.APIConnectionError as err:  # timeouts included
        raise Retryable(connection_problem(err)) from err
    except openai.APIStatusError as err:
        status = err.status_code
        problem = f"HTTP {status}: {shorten(err.message.removeprefix(f'Error code: {status} - '), 200)}"
        if status in RETRYABLE_STATUS or status >= 500:
            raise Retryable(problem, retry_after_s(err.response.headers)) from err
        raise LLMError(f"{where} refused the request with {problem}") from err
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
