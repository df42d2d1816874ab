"""The LLM gateway against a real loopback HTTP server: cache, retries, bounds, secrets."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import functools
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from health_orsc.core.config import SamplingParams, load_config
from health_orsc.llm import ChatRequest, Gateway, LLMError, RequestCache
from tests.conftest import fake_config

MESSAGES = [{"role": "user", "content": "How should I store insulin on a long flight?"}]


def _gateway(tmp_path, fake, **overrides) -> Gateway:
    return Gateway(load_config(fake_config(tmp_path, fake.base_url, **overrides)))


def test_second_identical_call_comes_from_the_persistent_cache(tmp_path, fake_llm):
    gw = _gateway(tmp_path, fake_llm)
    first = gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    gw = _gateway(tmp_path, fake_llm)  # a new process would see the same SQLite file
    second = gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert fake_llm.chat_count == 1
    assert not first.cached and second.cached
    assert second.text == first.text and second.key == first.key


def test_a_new_gateway_takes_calls_before_its_loop_thread_got_going(tmp_path, fake_llm, monkeypatch):
    """A task that makes a gateway and calls it at once, on a busy machine where the loop's
    thread has not started running yet, must not be told the gateway is closed (CI, once)."""
    new_loop = asyncio.new_event_loop

    def slow_starting_loop():
        loop = new_loop()
        run_forever = loop.run_forever

        def late():
            time.sleep(0.3)  # the thread is scheduled late
            run_forever()

        loop.run_forever = late
        return loop

    monkeypatch.setattr(asyncio, "new_event_loop", slow_starting_loop)
    gw = _gateway(tmp_path, fake_llm)
    try:
        assert gw.run(gw.chat("generator", MESSAGES)).text
    finally:
        gw.close()


def test_calls_in_flight_are_not_frozen_out_of_the_garbage_collector(tmp_path, fake_llm):
    """The gateway moves what is alive at its first call out of the cyclic collector's way
    (gc.freeze), once: freezing at every call froze the calls then in flight on other
    threads, cycles the collector never freed (6.5 GB by the end of a million-candidate
    build's jury). Calls submitted while others are in flight freeze nothing more."""
    import gc

    fake_llm.delay_s = 0.2
    gw = _gateway(tmp_path, fake_llm)
    try:
        gw.run(gw.chat("generator", MESSAGES))
        frozen = gc.get_freeze_count()
        in_flight = [gw.submit(gw.chat("generator", [{"role": "user", "content": f"question {i}"}]))
                     for i in range(4)]
        for i in range(20):
            gw.run(gw.chat("generator", MESSAGES, seed_offset=i + 1))
        assert [f.result().text for f in in_flight]
        assert gc.get_freeze_count() <= frozen  # only what the first call froze (some may have died)
    finally:
        gw.close()
        gc.unfreeze()


def test_variants_with_other_seeds_are_distinct_calls(tmp_path, fake_llm):
    gw = _gateway(tmp_path, fake_llm)
    a = gw.run(gw.chat("generator", MESSAGES, seed_offset=0))
    b = gw.run(gw.chat("generator", MESSAGES, seed_offset=1))
    gw.close()
    assert a.key != b.key and fake_llm.chat_count == 2
    assert [r["seed"] for r in fake_llm.requests] == [0, 1]


def test_operational_fields_do_not_change_the_cache_key(tmp_path, fake_llm):
    gw = _gateway(tmp_path, fake_llm)
    gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    gw = _gateway(tmp_path, fake_llm, endpoints={"fake": {
        "base_url": fake_llm.base_url, "max_concurrency": 1, "timeout_s": 99, "max_retries": 0}})
    result = gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert result.cached and fake_llm.chat_count == 1


def test_key_covers_model_messages_sampling_and_seed():
    sampling = SamplingParams(max_tokens=10).model_dump()
    base = ChatRequest("e", "m", MESSAGES, sampling)
    keys = {base.key}
    for change in [{"model": "m2"}, {"messages": MESSAGES * 2}, {"endpoint": "e2"},
                   {"response_format": {"type": "json_object"}},
                   *({"sampling": {**sampling, f: v}}
                     for f, v in [("temperature", 0.5), ("seed", 1), ("max_tokens", 11), ("top_p", 0.9)])]:
        keys.add(dataclasses.replace(base, **change).key)
    assert len(keys) == 9
    # the body sent is the key's fields minus the endpoint identity
    assert base.body() == {k: v for k, v in base.record().items() if k not in ("endpoint", "response_format")}


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_failures_are_retried(tmp_path, fake_llm, status):
    fake_llm.fail_next(2, status)
    gw = _gateway(tmp_path, fake_llm)
    result = gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert fake_llm.chat_count == 3 and result.text


def test_retries_are_bounded_and_the_error_names_the_endpoint(tmp_path, fake_llm):
    fake_llm.fail_next(10, 500)
    gw = _gateway(tmp_path, fake_llm)  # max_retries: 2
    with pytest.raises(LLMError, match="endpoint 'fake'.*after 3 attempts"):
        gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert fake_llm.chat_count == 3


def test_client_errors_are_not_retried(tmp_path, fake_llm):
    fake_llm.fail_next(1, 400)
    gw = _gateway(tmp_path, fake_llm)
    with pytest.raises(LLMError, match="HTTP 400"):
        gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert fake_llm.chat_count == 1


def test_concurrency_is_bounded_per_endpoint(tmp_path, fake_llm):
    fake_llm.delay_s = 0.05
    gw = _gateway(tmp_path, fake_llm)  # max_concurrency: 4

    async def burst():
        msgs = [[{"role": "user", "content": f"question {i}"}] for i in range(20)]
        return await asyncio.gather(*[gw.chat("generator", m) for m in msgs])

    results = gw.run(burst())
    gw.close()
    assert len(results) == 20 and fake_llm.chat_count == 20
    assert 2 <= fake_llm.max_in_flight <= 4


def test_gather_holds_a_worker_per_slot_not_a_task_per_job(tmp_path, fake_llm):
    """A stage's jobs come from an iterator, a slot's worth in progress at a time: a million
    jobs cost a million results, not a million waiting tasks."""
    gw = _gateway(tmp_path, fake_llm)
    slots = 2 * sum(ep.max_concurrency for ep in gw.config.endpoints.values())
    seen = {"running": 0, "most_running": 0, "most_tasks": 0, "started": []}

    async def job(i: int) -> int:
        seen["started"].append(i)
        seen["running"] += 1
        seen["most_running"] = max(seen["most_running"], seen["running"])
        seen["most_tasks"] = max(seen["most_tasks"], len(asyncio.all_tasks()))
        await asyncio.sleep(0)
        seen["running"] -= 1
        if i == 500 and seen.get("fail"):
            raise ValueError("job 500 failed")
        return i * i

    try:
        squares = gw.run(gw.gather(functools.partial(job, i) for i in range(3000)))
        assert squares == [i * i for i in range(3000)]
        assert seen["most_running"] == slots and seen["most_tasks"] <= slots + 2
        seen.update(fail=True, started=[])
        with pytest.raises(ValueError, match="job 500 failed"):
            gw.run(gw.gather([functools.partial(job, i) for i in range(3000)]))
        assert 500 < len(seen["started"]) <= 501 + slots  # none started after the failure
    finally:
        gw.close()


def test_identical_requests_in_flight_make_one_call(tmp_path, fake_llm):
    fake_llm.delay_s = 0.05
    gw = _gateway(tmp_path, fake_llm)

    async def same_twice_and_another():
        return await asyncio.gather(gw.chat("generator", MESSAGES), gw.chat("generator", MESSAGES),
                                    gw.chat("generator", [{"role": "user", "content": "other"}]))

    first, second, other = gw.run(same_twice_and_another())
    gw.close()
    assert fake_llm.chat_count == 2
    assert first.text == second.text and first.key == second.key and other.text != first.text
    assert sorted([first.cached, second.cached]) == [False, True]


def test_api_key_is_sent_but_never_written(tmp_path, fake_llm, monkeypatch):
    secret = "sk-test-DO-NOT-STORE-123456"
    monkeypatch.setenv("ORSC_TEST_KEY", secret)
    gw = _gateway(tmp_path, fake_llm, endpoints={"fake": {
        "base_url": fake_llm.base_url, "api_key_env": "ORSC_TEST_KEY"}})
    gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert fake_llm.headers[0]["authorization"] == f"Bearer {secret}"
    # the openai client's own headers and its HTTP client's, as any openai-based tool sends them
    assert fake_llm.headers[0]["x-stainless-lang"] == "python" and "accept-encoding" in fake_llm.headers[0]
    for path in (tmp_path / "outputs").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


# -- faults at the endpoint, headers, proxies (issue 8.2, 8.5) ------------------------

HTML = b"<html><body><h1>502 Bad Gateway</h1>upstream unavailable</body></html>"


def _cached_texts(tmp_path) -> list[str]:
    cache = RequestCache(tmp_path / "outputs" / "cache" / "llm.sqlite", readonly=True)
    try:
        return [cache.get(k)["text"] for k in cache.find()]
    finally:
        cache.close()


@pytest.mark.parametrize("status,body", [
    (200, HTML),                                  # a proxy's error page, sent with status 200
    (200, b'{"choices": []}'),                    # JSON, but no completion in it
    (200, b'{"choices": [{"message": {"content": "cut off'),  # a truncated body
])
def test_a_reply_that_is_not_a_chat_completion_is_retried_and_never_cached(tmp_path, fake_llm, status, body):
    fake_llm.fail_next(2, status, body, {"Content-Type": "text/html" if body is HTML else "application/json"})
    gw = _gateway(tmp_path, fake_llm)
    result = gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert fake_llm.chat_count == 3 and not result.cached
    assert _cached_texts(tmp_path) == [result.text]  # only the real completion was stored


def test_a_connection_closed_without_an_answer_is_retried(tmp_path, fake_llm):
    fake_llm.fail_next(2, 0)
    gw = _gateway(tmp_path, fake_llm)  # max_retries: 2
    result = gw.run(gw.chat("generator", MESSAGES))
    assert fake_llm.chat_count == 3 and not result.cached
    fake_llm.fail_next(3, 0)
    with pytest.raises(LLMError, match="after 3 attempts: connection error: Server disconnected"):
        gw.run(gw.chat("generator", [{"role": "user", "content": "another question"}]))
    gw.close()


def test_an_endpoint_that_never_sends_a_completion_fails_clearly_and_caches_nothing(tmp_path, fake_llm):
    fake_llm.fail_next(10, 200, HTML, {"Content-Type": "text/html"})
    gw = _gateway(tmp_path, fake_llm)  # max_retries: 2
    with pytest.raises(LLMError, match="after 3 attempts: the reply is not a chat completion.*502 Bad"):
        gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert _cached_texts(tmp_path) == []


@pytest.mark.parametrize("headers,wait_s", [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After": "2"}, 2.0),
    (lambda: {"Retry-After": email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=3),
                                                          usegmt=True)}, 2.0),
])
def test_retry_after_is_honoured(tmp_path, fake_llm, headers, wait_s):
    """The default backoff before a first retry is at most 0.75 s: a longer gap is the header's."""
    times = []
    fake_llm.reply = lambda request: times.append(time.monotonic()) or "answer"
    fake_llm.fail_next(1, 429, None, headers() if callable(headers) else headers)
    gw = _gateway(tmp_path, fake_llm)
    started = time.monotonic()
    gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert fake_llm.chat_count == 2 and times[0] - started >= wait_s - 0.05


def test_azure_endpoints_get_an_api_key_header_and_the_api_version(tmp_path, fake_llm, monkeypatch):
    monkeypatch.setenv("ORSC_AZURE_KEY", "azure-secret-123")
    gw = _gateway(tmp_path, fake_llm, endpoints={"fake": {
        "base_url": fake_llm.base_url, "api_key_env": "ORSC_AZURE_KEY", "azure_api_version": "2024-10-21"}})
    gw.run(gw.chat("generator", MESSAGES))
    gw.close()
    assert fake_llm.headers[0]["api-key"] == "azure-secret-123"
    assert "azure-secret-123" not in fake_llm.headers[0].get("authorization", "")
    # Azure's URL scheme: the role's model names the deployment
    assert fake_llm.paths[0] == "/v1/deployments/gen-model/chat/completions?api-version=2024-10-21"


class _ForwardProxy:
    """A plain HTTP forward proxy on loopback that counts what passes through it."""

    def __init__(self):
        self.forwarded: list[str] = []
        proxy = self
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # not through itself

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                proxy.forwarded.append(self.path)  # an absolute URL: the client knows it is a proxy
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "proxy-connection")}
                upstream = urllib.request.Request(self.path, data=body, headers=headers, method="POST")
                with direct.open(upstream, timeout=10) as resp:
                    data = resp.read()
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.headers.get("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_requests_go_through_the_proxy_the_environment_names(tmp_path, fake_llm, monkeypatch):
    proxy = _ForwardProxy()
    try:
        for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        gw = _gateway(tmp_path, fake_llm)
        result = gw.run(gw.chat("generator", MESSAGES))
        gw.close()
    finally:
        proxy.stop()
    assert result.text and fake_llm.chat_count == 1
    assert proxy.forwarded == [f"{fake_llm.base_url}/chat/completions"]


def test_a_reasoning_model_is_asked_as_its_api_requires(tmp_path):
    """OpenAI's reasoning models refuse `max_tokens` and a non-default temperature with HTTP
    400 (final, not retried); a role with max_completion_tokens, `omit` and reasoning_effort
    is answered, and its extra_body goes out as it is."""
    from tests.fakes.endpoint import FakeOpenAI

    fake = FakeOpenAI(reasoning_models=frozenset({"o-model"})).start()
    try:
        plain = {"generator": {"endpoint": "fake", "model": "o-model"}}
        gw = _gateway(tmp_path / "plain", fake, roles=plain)
        with pytest.raises(LLMError, match="refused the request with HTTP 400: Unsupported parameter"):
            gw.run(gw.chat("generator", MESSAGES))
        gw.close()
        assert len(fake.requests) == 1  # a 400 is final
        role = {"endpoint": "fake", "model": "o-model", "max_completion_tokens": 4096,
                "omit": ["temperature", "top_p"], "reasoning_effort": "low",
                "extra_body": {"service_tier": "flex", "metadata": {"run": "r1"}}}
        gw = _gateway(tmp_path / "reasoning", fake, roles={"generator": role})
        assert gw.run(gw.chat("generator", MESSAGES)).text
        gw.close()
    finally:
        fake.stop()
    sent = fake.requests[-1]
    assert sent["max_completion_tokens"] == 4096 and sent["reasoning_effort"] == "low"
    assert sent["service_tier"] == "flex" and sent["metadata"] == {"run": "r1"}
    assert not {"max_tokens", "temperature", "top_p"} & sent.keys() and sent["seed"] == 0


def test_request_fields_change_the_key_only_when_set(tmp_path):
    """A role that sets none of the frontier fields sends (and keys) exactly what it did
    before they existed; each one that is set is sent, so it changes the key."""
    from health_orsc.core.config import RoleConfig

    role = RoleConfig(endpoint="e", model="m", max_tokens=10)
    assert role.request_fields() == role.sampling().model_dump()
    base = ChatRequest("e", "m", MESSAGES, role.request_fields())
    keys = {base.key}
    for change in [{"max_completion_tokens": 99}, {"reasoning_effort": "high"}, {"omit": ["seed"]},
                   {"extra_body": {"service_tier": "flex"}}]:
        keys.add(ChatRequest("e", "m", MESSAGES, role.model_copy(update=change).request_fields()).key)
    assert len(keys) == 5
