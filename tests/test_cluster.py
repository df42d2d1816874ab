"""A real Dask cluster: `dask scheduler` and two `dask worker` processes on loopback,
started and stopped by the test, with the caches in a PostgreSQL server the test starts.
The snapshot must be byte-identical to the thread runner's."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from pipeline.cli import main
from pipeline.llm.embedded import free_port
from tests.conftest import fake_config, stop_process_group
from tests.fake_openai import FakeOpenAI
from tests.postgres import new_database
from tests.test_build import reply, snapshot_files

pytestmark = pytest.mark.slow


def _start(args: list[str], log) -> subprocess.Popen:
    """`dask scheduler ...` or `dask worker ...`, in its own process group."""
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_a_dask_cluster_with_a_postgres_cache_builds_the_thread_runners_snapshot(pg, tmp_path):
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = (tmp_path / "dask.log").open("wb")
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], log)]
    server = FakeOpenAI(reply).start()
    try:
        procs += [_start(["worker", address, "--nthreads", "2", "--no-dashboard", "--host", "127.0.0.1",
                          "--name", f"worker-{i}"], log) for i in range(2)]
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

        thread_cfg = fake_config(tmp_path / "thread", server.base_url)
        assert main(["build", "--config", str(thread_cfg), "--name", "t"]) == 0
        thread_calls = server.chat_count
        cluster_cfg = fake_config(tmp_path / "cluster", server.base_url,
                                  task_runner={"name": "dask", "address": address})
        raw = yaml.safe_load(cluster_cfg.read_text())
        raw["cache"] = {"url": new_database(pg)}
        cluster_cfg.write_text(yaml.safe_dump(raw))
        assert main(["build", "--config", str(cluster_cfg), "--name", "c"]) == 0
        cluster_calls = server.chat_count - thread_calls
    finally:
        server.stop()
        for proc in reversed(procs):
            stop_process_group(proc)
        log.close()
    assert cluster_calls == thread_calls  # its own cache (the database): every call again
    thread_snap = tmp_path / "thread" / "outputs" / "snapshots" / "t"
    cluster_snap = tmp_path / "cluster" / "outputs" / "snapshots" / "c"
    assert snapshot_files(cluster_snap) == snapshot_files(thread_snap)
    # the caches are in the database, not under outputs/
    assert not list((tmp_path / "cluster" / "outputs").glob("cache/*.sqlite"))
    assert main(["verify", str(cluster_snap)]) == 0
    assert all(p.poll() is not None for p in procs)
