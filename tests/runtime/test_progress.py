"""Long work shows its progress: per stage calls done of those expected, cache hits, rate and
time left (plain lines off a terminal, rich bars on one, Prefect progress artifacts);
Prefect's logs and tracebacks go to a log file; a killed build leaves no process behind
that the next build does not stop."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from health_orsc.cli import main
from tests.conftest import REPO, fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply as reply

pytestmark = pytest.mark.slow


def test_plain_progress_lines_and_a_log_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ORSC_PROGRESS_EVERY_S", "0.5")
    server = FakeOpenAI(reply, delay_s=0.05).start()
    try:
        cfg = fake_config(tmp_path, server.base_url, endpoints={"fake": {
            "base_url": server.base_url, "max_concurrency": 1}})
        assert main(["build", "--config", str(cfg), "--name", "slow"]) == 0
    finally:
        server.stop()
    captured = capsys.readouterr()
    err = captured.err
    assert re.search(r"^jury: \d+/\d+ calls, [\d.]+/s, \d+s left$", err, re.M), err
    assert re.search(r"^generate: finished in [\d.]+ s \(2 tasks, 12 model calls\)$", err, re.M), err
    assert re.search(r"^dedup: finished in", err, re.M) and "export: finished in" in err
    log = tmp_path / "outputs" / "logs" / "builds" / "slow.log"
    assert f"log: {log}" in err and log.is_file()  # (tests keep Prefect's logging at WARNING)
    assert "snapshot:" in captured.out and "model calls: 96" in captured.out


def test_each_stage_task_keeps_a_prefect_progress_artifact(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    server = FakeOpenAI(reply).start()
    try:
        cfg = fake_config(tmp_path, server.base_url, categories=["health_privacy"])
        assert main(["build", "--config", str(cfg), "--name", "artifacts"]) == 0
    finally:
        server.stop()
    keys = ["progress-generate-health-privacy", "progress-dedup", "progress-jury-health-privacy"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    latest = {}
    for a in sorted(found, key=lambda a: a.created):
        latest[a.key] = a
    assert set(latest) == set(keys)
    assert all(a.type == "progress" and float(a.data) == 100.0 for a in latest.values())
    assert "health_privacy: " in latest["progress-jury-health-privacy"].description


def test_a_terminal_gets_rich_progress_bars(prefect_api, tmp_path):
    server = FakeOpenAI(reply, delay_s=0.02).start()
    master, slave = pty.openpty()
    try:
        cfg = fake_config(tmp_path, server.base_url)
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "140",
               "PREFECT_API_URL": prefect_api}
        proc = subprocess.Popen([sys.executable, "-m", "health_orsc", "build", "--config", str(cfg),
                                 "--name", "tty"], stdout=subprocess.PIPE, stderr=slave, env=env, cwd=REPO)
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the build closed its end
                break
            if not chunk:
                break
            screen += chunk
        out = proc.communicate(timeout=300)[0].decode()
    finally:
        os.close(master)
        server.stop()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))  # without colours
    assert proc.returncode == 0, text[-3000:]
    assert "━" in text and re.search(r"jury\s+━+\s+96/96 calls", text), text[-3000:]
    assert "done in" in text and "snapshot:" in out


def test_a_failing_endpoint_prints_one_message_and_logs_the_traceback(tmp_path, capsys):
    server = FakeOpenAI().start()
    url = server.base_url
    server.stop()  # nothing listens there now
    cfg = fake_config(tmp_path, url)
    assert main(["build", "--config", str(cfg), "--name", "down"]) == 1
    err = capsys.readouterr().err
    failure = err[err.index("build failed:"):]
    assert "endpoint 'fake'" in failure and "after 3 attempts: connection error" in failure
    assert "run the same command again to resume" in failure
    assert len(failure.splitlines()) == 3 and "Traceback" not in err
    assert not (tmp_path / "outputs" / "snapshots" / "down").exists()
    log = tmp_path / "outputs" / "logs" / "builds" / "down.log"
    assert f"details (tracebacks, every task's log): {log}" in failure
    assert "Traceback" in log.read_text() and "LLMError" in log.read_text()


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_no_process_outlives_a_killed_build_by_more_than_two_seconds(tmp_path, capsys):
    """kill -9 of `orsc build` alone: its watchdog stops Prefect's temporary server (and
    itself), and generate's embedding process ends, within 2 s; the next build finds
    nothing left to stop."""
    server = FakeOpenAI(reply, delay_s=0.2).start()
    try:
        # the embedder on an endpoint of its own: generate embeds from a process beside the build's
        cfg = fake_config(tmp_path, server.base_url, dedup={"embedder": "embedder"},
                          roles={"embedder": {"endpoint": "embed", "model": "emb"}}, endpoints={
                              "fake": {"base_url": server.base_url, "max_concurrency": 4, "timeout_s": 10},
                              "embed": {"base_url": server.base_url, "max_concurrency": 2}})
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
        env.pop("PREFECT_API_URL", None)
        log = (tmp_path / "killed.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "health_orsc", "build", "--config", str(cfg),
                                 "--name", "killed"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 240
        while not _embedding(_children(proc.pid)) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # until generate has started its embedding process
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        left = _children(proc.pid)
        assert len(left) >= 3 and _embedding(left)  # with Prefect's temporary server and the watchdog
        records = sorted(p.name for p in (tmp_path / "outputs" / "run").glob("*.json"))
        assert any(name.startswith("prefect-server-") for name in records)
        proc.send_signal(signal.SIGKILL)  # kill -9 of `orsc build` alone
        proc.wait(timeout=10)
        killed = time.monotonic()
        while time.monotonic() - killed < 2 and _alive(left):
            time.sleep(0.05)
        assert not _alive(left), [p.cmdline() for p in _alive(left)]
        assert not list((tmp_path / "outputs" / "run").glob("*.json"))

        assert main(["build", "--config", str(cfg), "--name", "next"]) == 0
    finally:
        server.stop()
    assert "left running by a build that was killed" not in capsys.readouterr().err


def _embedding(procs: list[psutil.Process]) -> bool:
    """Whether one of them is generate's embedding process (build/alongside.py)."""
    for p in procs:
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                return True
        except psutil.NoSuchProcess:
            pass
    return False


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive
