"""Faults at the endpoint: replies that are not chat completions are retried and never
cached; a bad reply that was cached can be evicted, and the next build makes its calls again."""

from __future__ import annotations

import json

import pytest

from health_orsc.cli import main
from health_orsc.snapshot.store import load_manifest
from tests.conftest import fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply as reply

pytestmark = pytest.mark.slow

HTML = b"<!doctype html><html><body>Service temporarily unavailable</body></html>"


def _rows(snapshot) -> list[dict]:
    return [json.loads(line) for name in ("prompts.jsonl", "rejected.jsonl")
            for line in (snapshot / name).read_text().splitlines()]


def test_a_build_behind_a_flaky_proxy_completes_and_caches_no_error_page(tmp_path):
    server = FakeOpenAI(reply).start()
    try:
        server.fail_next(3, 200, HTML, {"Content-Type": "text/html"})
        cfg = fake_config(tmp_path, server.base_url)
        assert main(["build", "--config", str(cfg), "--name", "flaky"]) == 0
    finally:
        server.stop()
    snapshot = tmp_path / "outputs" / "snapshots" / "flaky"
    assert main(["verify", str(snapshot)]) == 0
    text = (tmp_path / "outputs" / "cache" / "llm.sqlite").read_bytes()
    assert b"temporarily unavailable" not in text


def test_evicting_a_bad_cached_reply_makes_the_next_build_ask_again(tmp_path, capsys):
    bad = {"on": True}

    def judge_2_goes_wrong(request: dict) -> str:
        if request["model"] == "judge-2" and bad["on"]:
            return json.dumps({"label": "benign", "rationale": "BAD VERDICT"})
        return reply(request)

    server = FakeOpenAI(judge_2_goes_wrong).start()
    outputs = str(tmp_path / "outputs")
    try:
        cfg = fake_config(tmp_path, server.base_url)
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
        v1 = tmp_path / "outputs" / "snapshots" / "v1"
        judge_2_calls = sum(r["model"] == "judge-2" for r in server.requests)
        bad["on"] = False  # the endpoint is fixed; the cache still holds its bad verdicts

        capsys.readouterr()
        assert main(["cache", "evict", "--outputs", outputs, "--role", "judge_2", "--dry-run"]) == 0
        assert f"would evict {judge_2_calls} cached calls" in capsys.readouterr().out
        assert main(["cache", "evict", "--outputs", outputs, "--role", "judge_2"]) == 0
        assert f"evicted {judge_2_calls} cached calls" in capsys.readouterr().out
        assert main(["cache", "evict", "--outputs", outputs, "--role", "judge_2"]) == 2  # none left

        before = server.chat_count
        assert main(["build", "--config", str(cfg), "--name", "v2"]) == 0
        asked = server.requests[before:]
        assert len(asked) == judge_2_calls and {r["model"] for r in asked} == {"judge-2"}
        v2 = v1.parent / "v2"
        rationales = {v["rationale"] for r in _rows(v2) for v in r["votes"] if v["juror"] == "judge_2"}
        assert rationales == {"scripted"}
        assert "BAD VERDICT" in {v["rationale"] for r in _rows(v1) for v in r["votes"]}

        # evict one prompt's calls; a --base build rebuilds its category only
        prompt = next(
            r for r in _rows(v2) if r["category"] == "drug_abuse" and r["votes"] and r["generation_call"]
        )  # a rewrite: a template prompt has no generation call
        assert main(["cache", "evict", "--outputs", outputs, "--prompt", prompt["id"]]) == 0
        capsys.readouterr()
        before = server.chat_count
        assert main(["build", "--config", str(cfg), "--base", str(v2), "--name", "v3"]) == 0
        out = capsys.readouterr().err  # the plan is a progress note
        assert server.chat_count - before == 1 + len(prompt["votes"])  # those calls, nothing else
    finally:
        server.stop()
    evicted = 1 + len(prompt["votes"])  # its rewrite and one call per juror
    assert f"drug_abuse: rebuilt ({evicted} of its calls were evicted from the request cache)" in out
    assert "self_harm: carried over" in out
    assert load_manifest(v1.parent / "v3").built == ["drug_abuse"]
