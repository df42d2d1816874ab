"""The one LLM gateway: roles -> endpoints, bounded concurrency, retries, request cache."""

from pipeline.llm.cache import RequestCache, request_key
from pipeline.llm.gateway import ChatResult, Gateway, LLMError, Usage

__all__ = ["ChatResult", "Gateway", "LLMError", "RequestCache", "Usage", "request_key"]
