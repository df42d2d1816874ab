"""A real Dask cluster: `dask scheduler` and two `dask worker` processes on loopback,
started and stopped by the test, with the caches in a PostgreSQL server the test starts.
The snapshot must be byte-identical to the thread runner's, and an evaluation of it on the
cluster must grade the same answers as one on threads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from health_orsc.cli import main
from health_orsc.llm.embedded import free_port
from tests.conftest import fake_config, panel, stop_process_group
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.postgres import new_database
from tests.fakes.scripts import eval_reply as reply
from tests.fakes.scripts import snapshot_files

pytestmark = pytest.mark.slow


def _start(args: list[str], log, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`dask scheduler ...` or `dask worker ...`, in its own process group."""
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **(env or {})})


def _with_panel(cfg: Path, **extra) -> Path:
    """Two models under test and a grader (tests/test_evaluate.py's scripts), and `extra`."""
    raw = yaml.safe_load(cfg.read_text())
    evaluation = panel({"refuser": "refuse-model", "complier": "comply-model"})
    raw["roles"].update(evaluation["roles"])
    raw.update(evaluation=evaluation["evaluation"], **extra)
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_a_dask_cluster_with_a_postgres_cache_builds_and_evaluates_as_threads_do(pg, prefect_api, tmp_path):
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = (tmp_path / "dask.log").open("wb")
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], log)]
    server = FakeOpenAI(reply).start()
    try:
        procs += [_start(["worker", address, "--nthreads", "2", "--no-dashboard", "--host", "127.0.0.1",
                          "--name", f"worker-{i}"], log, {"PREFECT_API_URL": prefect_api})
                  for i in range(2)]
        deadline = time.monotonic() + 120
        while True:  # the scheduler takes a moment to listen
            try:
                with Client(address, timeout=10) as client:
                    client.wait_for_workers(2, timeout=120)
                    workers = client.scheduler_info()["workers"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert len(workers) == 2

        thread_cfg = _with_panel(fake_config(tmp_path / "thread", server.base_url))
        assert main(["build", "--config", str(thread_cfg), "--name", "t"]) == 0
        thread_calls = server.chat_count
        cluster_cfg = _with_panel(fake_config(tmp_path / "cluster", server.base_url,
                                              task_runner={"name": "dask", "address": address}),
                                  cache={"url": new_database(pg)})
        assert main(["build", "--config", str(cluster_cfg), "--name", "c"]) == 0
        cluster_calls = server.chat_count - thread_calls
        # the thread runner's snapshot, evaluated on threads and on the cluster
        thread_snap = tmp_path / "thread" / "outputs" / "snapshots" / "t"
        for cfg in (thread_cfg, cluster_cfg):
            assert main(["evaluate", str(thread_snap), "--config", str(cfg), "--name", "e"]) == 0
        # the workers reported to this process's Prefect server, none started its own
        started = [c for p in procs for c in psutil.Process(p.pid).children(recursive=True)]
        servers = [" ".join(c.cmdline()) for c in started if any("create_app" in a for a in c.cmdline())]
        assert servers == []
    finally:
        server.stop()
        for proc in reversed(procs):
            stop_process_group(proc)
        log.close()
    assert cluster_calls == thread_calls  # its own cache (the database): every call again
    cluster_snap = tmp_path / "cluster" / "outputs" / "snapshots" / "c"
    assert snapshot_files(cluster_snap) == snapshot_files(thread_snap)
    # the caches are in the database, not under outputs/
    assert not list((tmp_path / "cluster" / "outputs").glob("cache/*.sqlite"))
    assert main(["verify", str(cluster_snap)]) == 0
    runs = [tmp_path / d / "outputs" / "evaluations" / "e" for d in ("thread", "cluster")]
    graded = [pq.read_table(run / "responses.parquet").to_pylist() for run in runs]
    assert len(graded[0]) > 0 and graded[0] == graded[1]
    assert (runs[0] / "leaderboard.csv").read_bytes() == (runs[1] / "leaderboard.csv").read_bytes()
    assert all(p.poll() is not None for p in procs)
