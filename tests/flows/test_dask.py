"""`task_runner: dask`: the stages run on a Dask LocalCluster of 2 worker processes and
the snapshot is byte-identical to the default (thread) runner's."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from health_orsc.cli import main
from tests.conftest import fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply as reply
from tests.fakes.scripts import snapshot_files

pytestmark = pytest.mark.slow


def test_dask_local_cluster_builds_the_same_snapshot(tmp_path, capsys):
    server = FakeOpenAI(reply).start()
    try:
        thread_cfg = fake_config(tmp_path / "thread", server.base_url)
        assert main(["build", "--config", str(thread_cfg), "--name", "t"]) == 0
        thread_calls = server.chat_count
        dask_cfg = fake_config(tmp_path / "dask", server.base_url,
                               task_runner={"name": "dask", "n_workers": 2, "threads_per_worker": 2})
        capsys.readouterr()
        assert main(["build", "--config", str(dask_cfg), "--name", "d"]) == 0
        out = capsys.readouterr().out
    finally:
        server.stop()
    # Separate outputs, so separate request caches: the Dask build made every call again,
    # and counted them although they were made in the worker processes.
    dask_calls = server.chat_count - thread_calls
    assert dask_calls == thread_calls
    assert f"model calls: {dask_calls} " in out
    thread_snap = tmp_path / "thread" / "outputs" / "snapshots" / "t"
    dask_snap = tmp_path / "dask" / "outputs" / "snapshots" / "d"
    assert snapshot_files(dask_snap) == snapshot_files(thread_snap)
    manifest = json.loads((dask_snap / "MANIFEST.json").read_text())
    assert manifest["config"]["task_runner"]["name"] == "dask"
    assert main(["verify", str(dask_snap)]) == 0
    # No Dask worker (or anything it started) outlives the build.
    # (multiprocessing's resource tracker stays until this process exits; it is not a worker)
    assert [c for c in _our_children()
            if ("multiprocessing" in c or "llama" in c) and "resource_tracker" not in c] == []


def _our_children() -> list[str]:
    return [cmd for _, cmd in _our_children_pids()]


def test_a_long_lived_worker_follows_an_edited_config(prefect_api, tmp_path):
    """Two builds on one Dask cluster; between them the config file is edited to give
    judge_1 another model. The worker must call the new model (its gateway is keyed by
    the config's content, not its path), as MANIFEST says."""
    from distributed import LocalCluster

    server = FakeOpenAI(reply).start()
    cluster = LocalCluster(n_workers=1, threads_per_worker=4, processes=True, dashboard_address=None,
                           env={"PREFECT_API_URL": prefect_api})
    try:
        cfg = fake_config(tmp_path, server.base_url, categories=["self_harm"],
                          task_runner={"name": "dask", "address": cluster.scheduler_address})
        assert main(["build", "--config", str(cfg), "--name", "before"]) == 0
        data = yaml.safe_load(cfg.read_text())
        data["roles"]["judge_1"]["model"] = "judge-1-new"
        cfg.write_text(yaml.safe_dump(data))
        sent = server.chat_count
        assert main(["build", "--config", str(cfg), "--name", "after"]) == 0
        judge_models = {r["model"] for r in server.requests[sent:]}
    finally:
        cluster.close()
        server.stop()
    assert "judge-1-new" in judge_models and "judge-1" not in judge_models
    manifest = json.loads((tmp_path / "outputs" / "snapshots" / "after" / "MANIFEST.json").read_text())
    assert manifest["models"]["judge_1"]["model"] == "judge-1-new"


def test_a_worker_killed_mid_jury_loses_no_completed_call(tmp_path):
    """SIGKILL of a Dask worker process while the jury votes: Dask runs its task again on a
    worker that is up, the build finishes, and no call whose reply was in the request cache
    at the kill is sent again (only those in flight or not yet committed may be)."""
    import signal
    import sqlite3
    import threading
    import time

    from tests.conftest import ENDPOINT_EMBEDDER

    server = FakeOpenAI(reply, delay_s=0.05).start()
    seen: dict = {}

    def judged() -> int:
        return sum(1 for r in list(server.requests) if r["model"].startswith("judge-"))

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 240
        while judged() < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        workers = [pid for pid, cmd in _our_children_pids()
                   if "multiprocessing" in cmd and "resource_tracker" not in cmd]
        with sqlite3.connect(tmp_path / "outputs" / "cache" / "llm.sqlite") as db:
            [(seen["committed"],)] = db.execute("SELECT COUNT(*) FROM calls").fetchall()
        seen["before"] = {json.dumps(r, sort_keys=True) for r in list(server.requests)}
        seen["workers"] = len(workers)
        os.kill(workers[0], signal.SIGKILL)

    try:
        cfg = fake_config(tmp_path, server.base_url, **ENDPOINT_EMBEDDER,
                          task_runner={"name": "dask", "n_workers": 2, "threads_per_worker": 2})
        killer = threading.Thread(target=kill_a_worker, daemon=True)
        killer.start()
        assert main(["build", "--config", str(cfg), "--name", "k"]) == 0
        killer.join(timeout=10)
        after = [json.dumps(r, sort_keys=True) for r in server.requests]
    finally:
        server.stop()
    assert seen["workers"] == 2 and seen["committed"] > 0
    repeated = {r for r in after[len(seen["before"]):] if r in seen["before"]}
    assert len(repeated) <= len(seen["before"]) - seen["committed"], (len(repeated), seen)
    assert len(after) > len(seen["before"])  # it was killed before the end
    assert main(["verify", str(tmp_path / "outputs" / "snapshots" / "k")]) == 0


def _our_children_pids() -> list[tuple[int, str]]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration):
            continue
        if ppid == os.getpid():
            out.append((int(pid), cmd))
    return out
