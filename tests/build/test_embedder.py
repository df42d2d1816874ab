"""An embedder role: dedup's vectors from an endpoint's /v1/embeddings (a real loopback
server), batched, cached by (model, text), started per category as soon as its prompts
are generated, and part of every fingerprint."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from health_orsc.build import alongside, stages
from health_orsc.build.dedup import usable
from health_orsc.cache.embeddings import EmbeddingCache
from health_orsc.cli import main
from health_orsc.core.config import load_config
from health_orsc.core.errors import InputError
from health_orsc.inputs.load import load_inputs
from health_orsc.llm import Gateway, LLMError, Usage
from health_orsc.snapshot.store import load_manifest
from tests.conftest import fake_config
from tests.fakes.endpoint import FakeOpenAI, bag_of_words, default_reply

EMBEDDER = {"endpoint": "fake", "model": "emb-model"}
DRUG_ABUSE = re.compile(r"opioid|benzodiazepine|xanax|oxycodone|alcohol|drink", re.I)


def _config(tmp_path, server, **dedup):
    cfg = fake_config(tmp_path, server.base_url)
    raw = yaml.safe_load(cfg.read_text())
    raw["roles"]["embedder"] = EMBEDDER
    raw["dedup"] = {**raw["dedup"], "embedder": "embedder", "batch_size": 4, **dedup}
    # room for every rewrite at once: one category's requests may wait on another's
    raw["endpoints"]["fake"].update(max_concurrency=16, timeout_s=30)
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _rows(snapshot) -> list[dict]:
    return [json.loads(line) for name in ("prompts.jsonl", "rejected.jsonl")
            for line in (snapshot / name).read_text().splitlines()]


def _sent(server) -> list[str]:
    return [text for _, r in server.embedding_requests for text in r["input"]]


@pytest.mark.slow
def test_a_build_embeds_through_the_endpoint_once_per_text_and_per_category_as_it_is_generated(tmp_path):
    embedding_started = threading.Event()
    waited: list[bool] = []

    def reply(request: dict) -> str:
        if request["model"].startswith("judge-"):
            return json.dumps({"label": "benign", "rationale": "scripted"})
        question = request["messages"][-1]["content"].removeprefix("Paraphrase: ")
        if DRUG_ABUSE.search(question):
            # drug_abuse's rewrites are answered only once some category's prompts are being
            # embedded: that happens in time only if embedding starts per category, before
            # every generate task has ended
            waited.append(embedding_started.wait(timeout=8))
            return question.rstrip("?") + ", asked another way?"
        return question  # self_harm: every rewrite repeats its template prompt

    def embed(text: str) -> list[float]:
        embedding_started.set()
        return bag_of_words(text)

    server = FakeOpenAI(reply, embed=embed).start()
    try:
        cfg = _config(tmp_path, server)
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
        sent = _sent(server)

        before = len(server.embedding_requests)
        assert main(["build", "--config", str(cfg), "--name", "v2"]) == 0
        warm_requests = len(server.embedding_requests) - before
    finally:
        server.stop()

    snapshot = tmp_path / "outputs" / "snapshots" / "v1"
    rows = _rows(snapshot)
    # the overlap: self_harm was being embedded while drug_abuse was still being generated
    assert waited and all(waited)
    # batches of dedup.batch_size, every text once, every prompt dedup judged among them
    assert all(len(r["input"]) <= 4 for _, r in server.embedding_requests)
    assert len(sent) == len(set(sent))
    assert {r["prompt"] for r in rows if r.get("reason") != "unusable_rewrite"} <= set(sent)
    assert warm_requests == 0  # the embedding cache holds every text
    # the remote vectors did the dedup: a rewrite that repeats its template is its duplicate
    by_id = {r["id"]: r for r in rows}
    harm_rewrites = [r for r in rows if r["category"] == "self_harm" and r["generation_call"]]
    assert harm_rewrites
    assert all(r["reason"] == "duplicate" and by_id[r["duplicate_of"]]["prompt"] == r["prompt"]
               for r in harm_rewrites)
    assert any(r["category"] == "drug_abuse" and r["generation_call"] and r["reason"] is None for r in rows)
    manifest = load_manifest(snapshot)
    assert manifest.models["embedder"]["model"] == "emb-model"


@pytest.mark.slow
def test_another_embedding_model_rebuilds_every_category(tmp_path, capsys):
    server = FakeOpenAI().start()
    try:
        cfg = _config(tmp_path, server)
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
        first = len(_sent(server))
        raw = yaml.safe_load(cfg.read_text())
        raw["roles"]["embedder"]["model"] = "emb-model-2"
        cfg.write_text(yaml.safe_dump(raw))
        capsys.readouterr()
        base = tmp_path / "outputs" / "snapshots" / "v1"
        assert main(["build", "--config", str(cfg), "--base", str(base), "--name", "v2"]) == 0
        err = capsys.readouterr().err
        second = _sent(server)[first:]
        models = {r["model"] for _, r in server.embedding_requests}
    finally:
        server.stop()
    assert "self_harm: rebuilt" in err and "drug_abuse: rebuilt" in err
    assert models == {"emb-model", "emb-model-2"} and len(second) == first  # every text again
    assert load_manifest(tmp_path / "outputs" / "snapshots" / "v2").built == ["self_harm", "drug_abuse"]


def test_generate_embeds_its_prompts_as_it_writes_them_and_the_embed_stage_finds_them(tmp_path, monkeypatch):
    """With an embedding endpoint, a category's prompts are embedded chunk by chunk while
    its generate task still makes calls, not after it: the embed stage finds them all."""
    monkeypatch.setattr(stages, "CHUNK", 7)  # several chunks
    answered: list[float] = []

    def reply(request: dict) -> str:
        answered.append(time.monotonic())
        return default_reply(request)

    server = FakeOpenAI(reply, delay_s=0.02).start()
    try:
        config = load_config(_config(tmp_path, server))
        inputs = load_inputs(config, ["self_harm"])
        gw = Gateway(config)
        try:
            usage = Usage()
            with alongside.embedder_alongside(config, gw) as embed:
                out = stages.generate_stage(inputs, "self_harm", "fp", gw, usage, embed)
            last_call = max(answered)
            embedded = len(server.embedding_requests)
            later = stages.embed_stage(config, out.path, gw)
        finally:
            gw.close()
    finally:
        server.stop()
    prompts = [c.prompt for c in usable(Path(out.path))]
    assert len(prompts) > 7 and set(_sent(server)) == set(prompts)  # each usable prompt, once
    assert server.embedding_requests[0][0] < last_call  # embedding began while generate called
    assert usage.calls["embedder"] == embedded  # counted as the generate task's calls
    assert sum(later.calls.values()) == 0 and len(server.embedding_requests) == embedded
    cache = EmbeddingCache.open(config)
    try:
        assert cache.db.query("SELECT COUNT(*) FROM vectors")[0][0] == len(set(prompts))
    finally:
        cache.close()


def test_an_embedding_endpoint_of_its_own_is_called_from_a_process_of_its_own(tmp_path):
    """With an endpoint no other role uses, generate's embedding calls come from one process
    beside the build's (not its event loop), counted as the task's calls; the process ends
    with the last task using it. An endpoint shared with other roles keeps them in-process."""
    server = FakeOpenAI(delay_s=0.01, embedding_pids=True).start()
    try:
        cfg = _config(tmp_path, server)
        raw = yaml.safe_load(cfg.read_text())
        raw["endpoints"]["embed"] = {"base_url": server.base_url, "max_concurrency": 4}
        raw["roles"]["embedder"]["endpoint"] = "embed"
        cfg.write_text(yaml.safe_dump(raw))
        config = load_config(cfg)
        inputs = load_inputs(config, ["self_harm", "drug_abuse"])
        gw = Gateway(config)
        children = []
        try:
            usages = {c: Usage() for c in inputs.categories}

            def task(category: str) -> None:
                with alongside.embedder_alongside(config, gw) as embed:
                    stages.generate_stage(inputs, category, "fp", gw, usages[category], embed)
                    children.extend(p for p in psutil.Process().children()
                                    if "spawn_main" in " ".join(p.cmdline()))

            threads = [threading.Thread(target=task, args=(c,)) for c in inputs.categories]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            embedded = len(server.embedding_requests)
        finally:
            gw.close()
    finally:
        server.stop()
    embedders = {p.pid for p in children}
    assert server.embedding_pids and os.getpid() not in server.embedding_pids
    assert server.embedding_pids <= embedders and len(embedders) == 1  # one, for both tasks
    assert sum(u.calls["embedder"] for u in usages.values()) == embedded > 0
    assert not any(p.is_running() for p in children)  # ended with the last task

    shared = load_config(_config(tmp_path / "shared", server))
    assert not alongside.own_process(shared)


def test_the_gateway_embeds_in_order_normalised_and_retries_a_bad_reply(tmp_path):
    server = FakeOpenAI(embed=lambda text: [float(len(text)), 1.0, 0.0]).start()
    try:
        gw = Gateway(load_config(_config(tmp_path, server)))
        try:
            server.fail_next(1, 503)
            server.fail_next(1, 200, b"<html>proxy</html>")
            vectors = gw.run(gw.embed("embedder", ["ab", "abcd"]))
        finally:
            gw.close()
    finally:
        server.stop()
    expected = np.array([[2.0, 1.0, 0.0], [4.0, 1.0, 0.0]])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(vectors, expected) and vectors.dtype == np.float32
    assert len(server.embedding_requests) == 3  # two failures, then the answer
    assert server.embedding_requests[-1][1] == {"model": "emb-model", "input": ["ab", "abcd"],
                                                "encoding_format": "float"}


def test_an_embeddings_reply_with_too_few_vectors_fails_for_good_after_the_retries(tmp_path):
    server = FakeOpenAI().start()
    try:
        gw = Gateway(load_config(_config(tmp_path, server)))
        short = {"object": "list", "data": [{"index": 0, "embedding": [1.0]}]}
        server.fail_next(3, 200, json.dumps(short).encode())
        try:
            with pytest.raises(LLMError, match="1 embeddings for 2 texts"):
                gw.run(gw.embed("embedder", ["a", "b"]))
        finally:
            gw.close()
    finally:
        server.stop()


@pytest.mark.parametrize("change, field, problem", [
    ({"dedup": {"embedder": "nobody"}}, "dedup.embedder", "names role 'nobody', which is not defined"),
    ({"endpoints": {"local": {"embedded": True}}, "roles": {"embedder": {"endpoint": "local", "model": "m"}}},
     "roles.embedder.endpoint", "serves chat completions only"),
    ({"dedup": {"model_path": "."}}, "dedup.model_path", "is set together with 'dedup.embedder'"),
])
def test_a_bad_embedder_setting_is_refused_naming_the_field(tmp_path, change, field, problem):
    cfg = fake_config(tmp_path, "http://127.0.0.1:9/v1")
    raw = yaml.safe_load(cfg.read_text())
    raw["roles"]["embedder"] = EMBEDDER
    raw["dedup"]["embedder"] = "embedder"
    for key, value in change.items():
        for sub, v in value.items():
            raw[key][sub] = v
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError) as err:
        load_config(cfg)
    assert err.value.field == field and problem in str(err.value)
