"""The one LLM gateway: roles -> endpoints, bounded concurrency, retries, request cache."""

from health_orsc.cache.requests import RequestCache
from health_orsc.llm.gateway import ChatResult, Gateway, LLMError, Usage, close_gateways, gateway_for
from health_orsc.llm.request import ChatRequest

__all__ = ["ChatRequest", "ChatResult", "Gateway", "LLMError", "RequestCache", "Usage", "close_gateways",
           "gateway_for"]
