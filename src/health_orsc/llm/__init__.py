"""The one LLM gateway: roles -> endpoints, bounded concurrency, retries, request cache.

`gateway.py` owns the event loop and the calls; `request.py` what a request is and its
cache key; `retry.py` the retry policy; `replies.py` what a usable reply is;
`cache_io.py` the request cache as the loop reads and writes it; `accounting.py` the
per-role counts; `embedded.py` the embedded llama.cpp server.
"""

from health_orsc.cache.requests import RequestCache
from health_orsc.llm.accounting import Usage
from health_orsc.llm.gateway import Gateway, close_gateways, gateway_for
from health_orsc.llm.replies import ChatResult
from health_orsc.llm.request import ChatRequest
from health_orsc.llm.retry import LLMError

__all__ = ["ChatRequest", "ChatResult", "Gateway", "LLMError", "RequestCache", "Usage", "close_gateways",
           "gateway_for"]
