"""The embedded llama.cpp server: started on loopback, stopped by its PID; a server left
behind by a killed build is stopped by the next one, and nothing else is."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from health_orsc.llm.embedded import EmbeddedServer
from tests.conftest import REPO

pytestmark = pytest.mark.slow

STARTER = """
import sys, time
from pathlib import Path
from health_orsc.llm.embedded import EmbeddedServer
server = EmbeddedServer(512, Path(sys.argv[1]))
print(server.start(), server.proc.pid, flush=True)
time.sleep(600)
"""


def _killable_build(outputs) -> tuple[subprocess.Popen, psutil.Process, psutil.Process]:
    """A process that starts the server and sleeps: (it, its server, its watchdog)."""
    build = subprocess.Popen([sys.executable, "-c", STARTER, str(outputs)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO)
    url, pid = build.stdout.readline().split()
    with urllib.request.urlopen(f"{url}/models", timeout=5) as resp:
        assert resp.status == 200
    [watchdog] = [p for p in psutil.Process(build.pid).children()
                  if "health_orsc.runtime.watchdog" in p.cmdline()]
    return build, psutil.Process(int(pid)), watchdog


def test_a_killed_builds_server_is_stopped_by_its_watchdog_within_two_seconds(tmp_path):
    build, server, watchdog = _killable_build(tmp_path / "outputs")
    build.kill()  # the build dies without stopping its server
    build.wait(timeout=10)
    server.wait(timeout=2)
    watchdog.wait(timeout=2)
    assert list((tmp_path / "outputs" / "run").glob("*.json")) == []


def test_a_server_left_by_a_killed_build_is_stopped_by_the_next(tmp_path):
    """The build and its watchdog both killed (the whole tree, say): the next build stops it."""
    outputs = tmp_path / "outputs"
    build, orphan, watchdog = _killable_build(outputs)
    watchdog.kill()
    deadline = time.monotonic() + 10
    while watchdog.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)  # dead, not yet reaped by its parent, the build
    build.kill()
    build.wait(timeout=10)
    assert orphan.is_running()

    second = EmbeddedServer(n_ctx=512, outputs_dir=outputs)
    try:
        second.start()
        orphan.wait(timeout=15)  # the stale server was stopped
        assert second.record.is_file()
    finally:
        second.stop()
    assert second.proc is None and list((outputs / "run").glob("*.json")) == []


def test_servers_of_running_builds_and_unrelated_processes_are_left_alone(tmp_path):
    outputs = tmp_path / "outputs"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    first = EmbeddedServer(n_ctx=512, outputs_dir=outputs)
    try:
        (outputs / "run").mkdir(parents=True)
        # a record of a dead build whose server's PID now belongs to another process
        (outputs / "run" / f"llama-server-{bystander.pid}.json").write_text(json.dumps({
            "kind": "llama-server", "pid": bystander.pid, "started": 1.0, "owner": 999_999_999,
            "owner_started": 1.0}))
        first.start()  # a build still running: its server must survive the next one's start
        second = EmbeddedServer(n_ctx=512, outputs_dir=outputs)
        second.start()
        second.stop()
        assert bystander.poll() is None and first.proc.poll() is None
    finally:
        first.stop()
        bystander.kill()
        bystander.wait()
