"""What comes back from an endpoint, validated before anything uses or caches it.

A chat completion must hold at least one choice with a message; an embeddings reply one
vector per text, all of one size. Anything else raises `Retryable`, so a proxy's error
page sent with status 200 or a cut-off body is asked again and never lands in the
request cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from health_orsc.llm.retry import Retryable


@dataclass(frozen=True)
class ChatResult:
    text: str
    key: str  # request cache key: the handle provenance uses to find the raw call
    cached: bool
    # asked for with top_logprobs: per generated token, {token, logprob, top_logprobs: [...]}
    logprobs: list[dict[str, Any]] | None = None
    # why the model stopped (`length`: cut off at the role's token cap): from the reply,
    # or from the stored reply of a cache hit when asked for (finish_reason=True); None
    # otherwise, or when the endpoint did not say
    finish_reason: str | None = None


def choice_logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A choice's token log-probabilities (OpenAI's `logprobs.content`), if any."""
    logprobs = choice.get("logprobs") or {}
    return logprobs.get("content") if isinstance(logprobs, dict) else None


def label_mass(position: dict[str, Any], words: tuple[str, ...]) -> dict[str, float]:
    """At one generated token (an entry of `logprobs.content`): per word, the probability
    mass of the token's candidates that begin it (stripped of spaces, quotes and
    punctuation, case ignored: "harm", " Benign", "un" of "unsafe")."""
    mass = dict.fromkeys(words, 0.0)
    for candidate in position.get("top_logprobs") or []:
        token = str(candidate.get("token", "")).strip().strip("\"'*`.:").lower()
        for word in words:
            if token and word.startswith(token):
                mass[word] += math.exp(float(candidate["logprob"]))
    return mass


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    content: str | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: _Message
    finish_reason: str | None = None


class ChatCompletionReply(BaseModel):
    """The part of a chat completion the gateway relies on: validated before it is cached."""

    model_config = ConfigDict(extra="allow")
    choices: list[_Choice] = Field(min_length=1)
    usage: dict[str, Any] | None = None


class _Embedding(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    embedding: list[float] = Field(min_length=1)


class EmbeddingsReply(BaseModel):
    """The part of a /v1/embeddings reply the gateway relies on."""

    model_config = ConfigDict(extra="allow")
    data: list[_Embedding]


def parse_reply(raw: bytes) -> ChatCompletionReply:
    """A reply is used (and cached) only when it is a chat completion; anything else -
    an HTML error page sent with status 200, a cut-off body - is retried."""
    try:
        return ChatCompletionReply.model_validate_json(raw)
    except ValidationError as err:
        text = raw[:200].decode(errors="replace")
        raise Retryable(f"the reply is not a chat completion: {text!r}") from err


def parse_embeddings(raw: bytes, n: int) -> EmbeddingsReply:
    """A reply is used only when it holds one vector per text, all of one size; anything
    else is retried."""
    try:
        reply = EmbeddingsReply.model_validate_json(raw)
    except ValidationError as err:
        text = raw[:200].decode(errors="replace")
        raise Retryable(f"the reply is not an embeddings list: {text!r}") from err
    if sorted(d.index for d in reply.data) != list(range(n)):
        raise Retryable(f"the reply holds {len(reply.data)} embeddings for {n} texts")
    if len({len(d.embedding) for d in reply.data}) > 1:
        raise Retryable("the reply's embeddings differ in size")
    return reply
