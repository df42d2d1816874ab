"""The LLM gateway against a real loopback HTTP server: cache, retries, bounds, secrets."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.config import load_config
from pipeline.llm import Gateway, LLMError
from pipeline.llm.cache import request_key
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
    base = {"endpoint": "e", "model": "m", "messages": MESSAGES, "temperature": 0.0, "top_p": 1.0,
            "max_tokens": 10, "seed": 0, "response_format": None}
    keys = {request_key(base)}
    for field, value in [("model", "m2"), ("temperature", 0.5), ("seed", 1), ("max_tokens", 11),
                         ("messages", MESSAGES * 2), ("endpoint", "e2")]:
        keys.add(request_key({**base, field: value}))
    assert len(keys) == 7
    assert request_key({**base, "timeout": 5, "max_concurrency": 9}) == request_key(base)


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
    for path in (tmp_path / "outputs").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
