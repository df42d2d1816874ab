"""The request cache and the embedding cache in PostgreSQL (`cache.url`), against a real
server the tests start (tests/fakes/postgres.py): the same behaviour as SQLite, many writers at
once, a build on it, an unreachable or lost database, and `orsc cache migrate`."""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest
import yaml

from health_orsc.cache.embeddings import EmbeddingCache
from health_orsc.cache.requests import CachedCall, RequestCache
from health_orsc.cli import main
from health_orsc.core.config import CacheConfig, load_config
from health_orsc.core.errors import InputError
from tests.conftest import fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.postgres import new_database


def _call(key: str, role: str = "judge_1", text: str = "benign") -> CachedCall:
    return CachedCall(key=key, endpoint="http://e/v1", model="m", request_json='{"model":"m"}',
                      response_json='{"choices":[]}', text=text, usage={"total_tokens": 3}, latency_s=0.25,
                      role=role, created_at=1764500000.123456)


@pytest.fixture(params=["sqlite", "postgres"])
def cache(request, tmp_path):
    if request.param == "sqlite":
        c = RequestCache.at(CacheConfig(), tmp_path)
    else:
        url = new_database(request.getfixturevalue("pg"))
        c = RequestCache.at(CacheConfig(url=url), tmp_path)
    yield c
    c.close()


def test_both_backends_store_find_and_evict_calls_alike(cache):
    cache.put_many([_call("k1"), _call("k2", role="judge_2", text="harmful")])
    cache.put_many([_call("k1", text="a second answer")])  # a key already there is kept
    got = cache.get("k1")
    assert got["text"] == "benign" and got["usage"] == {"total_tokens": 3} and got["role"] == "judge_1"
    assert got["created_at"] == 1764500000.123456 and got["latency_s"] == 0.25  # full precision
    assert cache.text("k2") == "harmful" and cache.text("nope") is None
    assert cache.find(role="judge_2") == ["k2"] and cache.find(key_prefix="k") == ["k1", "k2"]
    assert cache.epoch() == 0 and not cache.has_evictions()
    assert cache.evict(["k2"]) == 1
    assert cache.text("k2") is None and cache.evicted(["k1", "k2"]) == {"k2"} and cache.epoch() == 1
    cache.put_many([_call("k2")])  # made again: no longer evicted
    assert cache.evicted(["k2"]) == set() and cache.epoch() == 1


def _writer(url: str, worker: int) -> None:
    cache = RequestCache.at(CacheConfig(url=url), None)
    try:
        for start in range(0, 400, 50):  # overlapping keys: every worker writes 0..399
            cache.put_many([_call(f"key-{i:04d}", text=f"worker {worker}") for i in range(start, start + 50)])
    finally:
        cache.close()


def test_many_processes_write_one_database_at_once_without_losing_or_doubling_a_row(pg):
    url = new_database(pg)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(url, w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    cache = RequestCache.at(CacheConfig(url=url), None)
    try:
        keys = cache.find()
        assert keys == [f"key-{i:04d}" for i in range(400)]  # each once, none lost
    finally:
        cache.close()


def _pg_config(tmp_path, server, url: str, **extra):
    cfg = fake_config(tmp_path, server.base_url, **extra)
    raw = yaml.safe_load(cfg.read_text())
    raw["cache"] = {"url": url}
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


@pytest.mark.slow
def test_a_build_on_postgres_matches_one_on_sqlite_and_provenance_reads_it(pg, tmp_path, capsys):
    url = new_database(pg)
    server = FakeOpenAI().start()
    try:
        on_pg = _pg_config(tmp_path / "pg", server, url)
        assert main(["build", "--config", str(on_pg), "--name", "v1"]) == 0
        calls = server.chat_count
        assert main(["build", "--config", str(on_pg), "--name", "v2"]) == 0
        assert server.chat_count == calls  # every call came from the database
        on_sqlite = fake_config(tmp_path / "sqlite", server.base_url)
        assert main(["build", "--config", str(on_sqlite), "--name", "v1"]) == 0
        row = next(r for r in map(json.loads, (tmp_path / "pg" / "outputs" / "snapshots" / "v1" /
                                               "prompts.jsonl").read_text().splitlines())
                   if r["generation_call"])  # a rewrite: its call and its votes' calls
        capsys.readouterr()
        assert main(["provenance", row["id"], "--config", str(on_pg), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    finally:
        server.stop()
    assert not (tmp_path / "pg" / "outputs" / "cache" / "llm.sqlite").exists()
    assert not (tmp_path / "pg" / "outputs" / "cache" / "embeddings.sqlite").exists()
    for name in ("prompts.jsonl", "rejected.jsonl", "validation_sample.csv"):
        assert ((tmp_path / "pg" / "outputs" / "snapshots" / "v1" / name).read_bytes()
                == (tmp_path / "sqlite" / "outputs" / "snapshots" / "v1" / name).read_bytes())
    calls = [report["generation_call"], *(c for v in report["votes"] for c in v["calls"])]
    assert len(calls) == 4 and all(c["found"] and c["raw_response"] and c["made_at"] for c in calls)
    vectors = EmbeddingCache.at(CacheConfig(url=url), None)
    try:
        assert len(vectors.rows(limit=10_000)) > 0
    finally:
        vectors.close()


def test_an_unreachable_database_stops_the_build_before_any_call(tmp_path, capsys):
    server = FakeOpenAI().start()
    try:
        from health_orsc.llm.embedded import free_port

        cfg = _pg_config(tmp_path, server, f"postgresql://orsc@127.0.0.1:{free_port()}/orsc")
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 2
        err = capsys.readouterr().err
    finally:
        server.stop()
    assert "field 'cache.url'" in err and "cannot connect" in err
    assert server.chat_count == 0 and not (tmp_path / "outputs" / "snapshots" / "v1").exists()


@pytest.mark.slow
def test_losing_the_database_mid_build_exits_1_and_the_next_build_resumes(pg, tmp_path, capsys):
    url = new_database(pg)
    jurors = {"asked": 0, "stopped": False}

    def reply(request: dict) -> str:
        if request["model"].startswith("judge-"):
            jurors["asked"] += 1
            if jurors["asked"] == 10:  # the database goes away while the jury is at work,
                _wait_for_a_verdict(url)  # once some verdicts are committed
                jurors["stopped"] = True
                pg.stop("immediate")
            return json.dumps({"label": "benign", "rationale": "scripted"})
        return "Could you tell me: " + request["messages"][-1]["content"].removeprefix("Paraphrase: ")

    server = FakeOpenAI(reply).start()
    try:
        cfg = _pg_config(tmp_path, server, url)
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 1
        err = capsys.readouterr().err
        first = server.chat_count
        pg.start()
        stored = RequestCache.at(CacheConfig(url=url), None)
        try:  # the verdicts written before the database went away
            kept = sum(len(stored.find(role=f"judge_{i}")) for i in (1, 2, 3))
        finally:
            stored.close()
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
    finally:
        server.stop()
        if not _up(pg):  # the server is shared by this module's tests
            pg.start()
    assert "the cache database" in err and "run the same command again to resume" in err

    def key(r: dict) -> str:
        return json.dumps(r, sort_keys=True)

    judged_before = {key(r) for r in server.requests[:first] if r["model"].startswith("judge-")}
    judged_after = {key(r) for r in server.requests[first:] if r["model"].startswith("judge-")}
    needed = judged_before | judged_after
    # every verdict stored before the database went away was not asked for again; only the rest was
    assert 0 < kept < len(judged_before) and len(judged_after) == len(needed) - kept
    assert not [r for r in server.requests[first:] if not r["model"].startswith("judge-")]
    assert (tmp_path / "outputs" / "snapshots" / "v1" / "MANIFEST.json").is_file()


@pytest.mark.slow
def test_connections_dropped_mid_build_are_opened_again_and_no_reply_is_lost(pg, tmp_path):
    """The server ends the build's sessions three times while the jury is at work (as a
    restart, a proxy or an idle timeout would): the build goes on, every reply it got is
    in the cache, and the same build again asks for nothing."""
    url = new_database(pg)
    ended, due, ending = [], [5, 15, 25], threading.Lock()

    def reply(request: dict) -> str:
        if request["model"].startswith("judge-"):
            # one round at a time: a round ends every other session, a concurrent round's too
            # (that reply then failed, and a call the build made had no reply to keep)
            with ending:
                asked = sum(1 for r in server.requests if r["model"].startswith("judge-"))
                if due and asked >= due[0]:
                    due.pop(0)
                    ended.append(_end_sessions(url))
            return json.dumps({"label": "benign", "rationale": "scripted"})
        return "Could you tell me: " + request["messages"][-1]["content"].removeprefix("Paraphrase: ")

    server = FakeOpenAI(reply).start()
    try:
        cfg = _pg_config(tmp_path, server, url)
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
        calls = server.chat_count
        stored = RequestCache.at(CacheConfig(url=url), None)
        try:
            assert len(stored.find()) == calls  # every reply the build got was kept
        finally:
            stored.close()
        assert main(["build", "--config", str(cfg), "--name", "v2"]) == 0
        assert server.chat_count == calls
    finally:
        server.stop()
    # the build's sessions were ended at least once; under load a round can fall between
    # two sessions (one just ended, the next not yet opened) and end none (seen in CI)
    assert len(ended) == 3 and any(ended)


def _end_sessions(url: str) -> int:
    """End every other session on the database (pg_terminate_backend); how many."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall())


def _wait_for_a_verdict(url: str, timeout_s: float = 60) -> None:
    import time

    import psycopg

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while not conn.execute("SELECT 1 FROM calls WHERE role LIKE 'judge%' LIMIT 1").fetchone():
            assert time.monotonic() < deadline, "no verdict was committed"
            time.sleep(0.05)


def _up(pg) -> bool:
    import psycopg

    try:
        psycopg.connect(pg.url, connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False


@pytest.mark.slow
def test_migrate_copies_both_caches_there_and_back(pg, tmp_path, capsys):
    server = FakeOpenAI().start()
    try:
        cfg = fake_config(tmp_path / "a", server.base_url)
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
        calls = server.chat_count
        outputs = tmp_path / "a" / "outputs"
        source = RequestCache(outputs / "cache" / "llm.sqlite")
        key = source.find()[0]
        assert source.evict([key]) == 1
        n = len(source.find())
        source.close()
        url = new_database(pg)
        capsys.readouterr()
        assert main(["cache", "migrate", str(outputs), url]) == 0
        out = capsys.readouterr().out
        assert f"{n:,} of {n:,} model calls new" in out and "1 evictions (epoch 1)" in out
        assert main(["cache", "migrate", str(outputs), url]) == 0  # again: nothing new
        assert f"0 of {n:,} model calls new" in capsys.readouterr().out
        back = tmp_path / "b" / "outputs"
        assert main(["cache", "migrate", url, str(back)]) == 0
        # a build on the migrated cache asks the endpoint only for the evicted call
        pg_cfg = _pg_config(tmp_path / "c", server, url)
        assert main(["build", "--config", str(pg_cfg), "--name", "v1"]) == 0
    finally:
        server.stop()
    assert server.chat_count == calls + 1
    a = RequestCache(outputs / "cache" / "llm.sqlite", readonly=True)
    b = RequestCache(back / "cache" / "llm.sqlite", readonly=True)
    try:
        assert a.rows(limit=100_000) == b.rows(limit=100_000) and b.epoch() == 1 and b.evicted([key]) == {key}
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("args, problem", [
    (["cache", "migrate", "outputs", "outputs"], "is the same cache as SRC"),
    (["cache", "migrate", "nowhere", "elsewhere"], "holds no cache"),
    (["cache", "migrate", "outputs", "postgresql://orsc:secret@127.0.0.1/orsc"], "holds a password"),
])
def test_migrate_refuses_bad_arguments(tmp_path, monkeypatch, capsys, args, problem):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "cache").mkdir(parents=True)
    RequestCache(tmp_path / "outputs" / "cache" / "llm.sqlite").close()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert problem in err and "secret" not in err


@pytest.mark.parametrize("cache_cfg, problem", [
    ({"url": "postgresql://orsc:hunter2@db/orsc"}, "holds a password"),
    ({"url": "mysql://db/orsc"}, "is not a PostgreSQL URL"),
    ({"url": "postgresql://orsc@db/orsc", "password_env": "hunter2"}, "NAME of an environment variable"),
])
def test_a_bad_cache_setting_is_refused_without_echoing_a_secret(tmp_path, cache_cfg, problem):
    cfg = fake_config(tmp_path, "http://127.0.0.1:9/v1")
    raw = yaml.safe_load(cfg.read_text())
    raw["cache"] = cache_cfg
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError) as err:
        load_config(cfg)
    assert problem in str(err.value) and "hunter2" not in str(err.value)
