"""One chat-completion request: what is sent to the endpoint and what its cache key is made of.

The cache key is the sha256 of the canonical JSON of (endpoint identity, model,
messages, the role's request fields - sampling, and what a frontier model needs:
max_completion_tokens, reasoning_effort, extra_body - and the response format).
Operational fields - timeouts, concurrency, retries, API keys, the embedded server's
port - are not part of a request, so changing them never invalidates the cache (the
inspect_ai rule). The body sent is the same fields minus the endpoint identity: both come
from this one class.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from health_orsc.core.config import EndpointConfig
from health_orsc.core.records import canonical_json, sha256_hex


def reply_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent with a structured request, derived from the pydantic model that
    validates the reply, so the two cannot disagree: each field's type, enum and maximum
    length (keywords strict-mode endpoints accept), every field required, nothing else."""
    full = model.model_json_schema()
    keep = ("type", "enum", "maxLength")
    return {"type": "object",
            "properties": {name: {k: spec[k] for k in keep if k in spec}
                           for name, spec in full["properties"].items()},
            "required": list(full["properties"]), "additionalProperties": False}


def response_format(ep: EndpointConfig, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """How to ask this endpoint for JSON that follows `schema` (None: free text)."""
    if schema is None or ep.structured_output == "none":
        return None
    if ep.structured_output == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}


@dataclass(frozen=True)
class ChatRequest:
    endpoint: str  # EndpointConfig.identity: stable across runs (no embedded port)
    model: str
    messages: list[dict[str, str]]
    sampling: dict[str, Any]  # the role's request fields (RoleConfig.request_fields)
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None  # ask for each token's log-probability and its N likeliest rivals

    def _logprobs(self) -> dict[str, Any]:
        # absent unless asked for: the keys of requests without it stay as they were
        return {} if self.top_logprobs is None else {"logprobs": True, "top_logprobs": self.top_logprobs}

    def record(self) -> dict[str, Any]:
        """Every field of the request, flat: the cache key's input and the stored request."""
        return {"endpoint": self.endpoint, "model": self.model, "messages": self.messages,
                **self.sampling, "response_format": self.response_format, **self._logprobs()}

    @functools.cached_property
    def record_json(self) -> str:
        """record() as canonical JSON: hashed for the key and stored as it is."""
        return canonical_json(self.record())

    @functools.cached_property
    def key(self) -> str:
        return sha256_hex(self.record_json)

    def body(self) -> dict[str, Any]:
        """The JSON body of POST /chat/completions."""
        body = {"model": self.model, "messages": self.messages, **self.sampling, **self._logprobs()}
        if self.response_format is not None:
            body["response_format"] = self.response_format
        return body
