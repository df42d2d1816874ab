"""A scripted OpenAI-compatible chat server on loopback: a real HTTP server, not a mock.

Replies come from `reply(request) -> str`, or `-> (str, logprobs)` for a reply with
token log-probabilities (the `logprobs.content` list of an OpenAI chat completion).
POST .../embeddings answers with `embed(text) -> list[float]` per input (default: a
bag of words hashed into 64 dimensions, so texts sharing words are similar) and is
recorded apart, in `embedding_requests` with its arrival time;
`fail_next(n, status, body, headers)` makes the next n requests get another answer (an
error status, an HTML page, a Retry-After header; status 0: the connection closed
without an answer); with `cap_words`, a reply longer than the request's token cap
(`max_completion_tokens` or `max_tokens`, counted in words) is cut there with
finish_reason `length`; every request is recorded with its path and headers, and the
highest number of requests in flight at once is tracked.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil


def default_reply(request: dict) -> str:
    """Generator: echo the question back, reworded. Juror: benign with a rationale."""
    last = request["messages"][-1]["content"]
    if request.get("response_format"):
        return json.dumps({"label": "benign", "rationale": "A safety-minded question."})
    match = re.search(r"Question: (.*)", last, re.S)
    question = match.group(1).strip() if match else last
    return f"Could you tell me: {question} (variant {request.get('seed')})"


def bag_of_words(text: str, dim: int = 64) -> list[float]:
    vector = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vector[hashlib.sha256(word.encode()).digest()[0] % dim] += 1.0
    return vector


def reasoning_refusal(request: dict) -> tuple[int, dict, dict] | None:
    """What OpenAI's API answers a reasoning model's request it will not take (its own
    words), or None."""
    def error(message: str, param: str, code: str) -> tuple[int, dict, dict]:
        return 400, {"error": {"message": message, "type": "invalid_request_error", "param": param,
                               "code": code}}, {}
    if "max_tokens" in request:
        return error("Unsupported parameter: 'max_tokens' is not supported with this model. Use"
                     " 'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    for name in ("temperature", "top_p"):
        if name in request and request[name] != 1:
            return error(f"Unsupported value: '{name}' does not support {request[name]} with this model."
                         " Only the default (1) value is supported.", name, "unsupported_value")
    return None


def cut_at_cap(text: str, request: dict) -> tuple[str, str]:
    """(text, finish_reason) as a server capping output tokens answers, a word per token."""
    cap = request.get("max_completion_tokens", request.get("max_tokens"))
    words = text.split(" ")
    if cap is None or len(words) <= cap:
        return text, "stop"
    return " ".join(words[:cap]), "length"


class FakeOpenAI:
    def __init__(self, reply: Callable[[dict], str | tuple] = default_reply, delay_s: float = 0.0,
                 embed: Callable[[str], list[float]] = bag_of_words,
                 reasoning_models: frozenset = frozenset(), cap_words: bool = False,
                 embedding_pids: bool = False):
        """`reasoning_models`: model names answered as OpenAI answers its reasoning models
        (reasoning_refusal): HTTP 400 for `max_tokens` or a non-default temperature/top_p.
        `embedding_pids`: note which processes sent embedding requests (`embedding_pids`)."""
        self.reply = reply
        self.reasoning_models = reasoning_models
        self.cap_words = cap_words
        self.delay_s = delay_s
        self.embed = embed
        self.embedding_requests: list[tuple[float, dict]] = []  # (time.monotonic(), request)
        self.embedding_pids: set[int] | None = set() if embedding_pids else None
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.headers: list[dict] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: dict | bytes, headers: dict | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                if self.path.endswith("/embeddings"):
                    pids = fake.embedding_pids
                    client = fake.client_pid(self.client_address[1]) if pids is not None else None
                    with fake._lock:
                        fake.embedding_requests.append((time.monotonic(), request))
                        if client is not None:
                            pids.add(client)
                        fault = fake._failures.pop(0) if fake._failures else None
                    if fault is not None:
                        self._send(*fault)
                        return
                    data = [{"object": "embedding", "index": i, "embedding": fake.embed(text)}
                            for i, text in enumerate(request["input"])]
                    self._send(200, {"object": "list", "data": data, "model": request["model"],
                                     "usage": {"prompt_tokens": 1, "total_tokens": 1}})
                    return
                with fake._lock:
                    fake.requests.append(request)
                    fake.paths.append(self.path)
                    number = len(fake.requests)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fault = fake._failures.pop(0) if fake._failures else None
                    if fault is None and request.get("model") in fake.reasoning_models:
                        fault = reasoning_refusal(request)
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                try:
                    if fake.delay_s:
                        time.sleep(fake.delay_s)
                    if fault is None:
                        status, headers = 200, {}
                        answer = fake.reply(request)
                        choice = {"index": 0, "finish_reason": "stop"}
                        if isinstance(answer, tuple):  # (text, logprobs content) as OpenAI sends it
                            answer, choice["logprobs"] = answer[0], {"content": answer[1]}
                        if fake.cap_words:
                            answer, choice["finish_reason"] = cut_at_cap(answer, request)
                        body: dict | bytes = {
                            "id": f"chatcmpl-{number}", "object": "chat.completion",
                            "created": 0, "model": request["model"],
                            "choices": [{**choice, "message": {"role": "assistant", "content": answer}}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                        }
                    else:
                        status, body, headers = fault
                finally:
                    # out of flight once the answer is ready: the client may send its next
                    # request as soon as it has read this one
                    with fake._lock:
                        fake._in_flight -= 1
                if status == 0:  # a dropped connection: no answer at all
                    self.close_connection = True
                    return
                self._send(status, body, headers)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @staticmethod
    def client_pid(port: int) -> int | None:
        """The process whose socket on loopback `port` is connected to this server."""
        for conn in psutil.net_connections(kind="tcp4"):
            if conn.laddr and conn.laddr.port == port and conn.laddr.ip == "127.0.0.1":
                return conn.pid
        return None

    def fail_next(self, n: int, status: int = 500, body: dict | bytes | None = None,
                  headers: dict | None = None) -> None:
        """The next n requests get this answer instead of a completion (default: an
        OpenAI-style error body with `status`)."""
        if body is None:
            body = {"error": {"message": f"scripted failure {status}", "type": "server_error"}}
        with self._lock:
            self._failures.extend([(status, body, headers or {})] * n)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def chat_count(self) -> int:
        with self._lock:
            return len(self.requests)
