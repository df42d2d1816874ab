"""The one LLM gateway: roles -> endpoints, bounded concurrency, retries, request cache."""

from pipeline.llm.cache import RequestCache
from pipeline.llm.gateway import ChatResult, Gateway, LLMError, Usage
from pipeline.llm.request import ChatRequest

__all__ = ["ChatRequest", "ChatResult", "Gateway", "LLMError", "RequestCache", "Usage"]
