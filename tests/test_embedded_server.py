"""The embedded llama.cpp server: started on loopback, stopped by its PID, and a server
left behind by a killed build is stopped by the next one (and nothing else is)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from pipeline.llm.embedded import EmbeddedServer

pytestmark = pytest.mark.slow


def test_a_server_left_by_a_killed_build_is_stopped_by_the_next(tmp_path):
    log = tmp_path / "logs" / "llama-server.log"
    first = EmbeddedServer(n_ctx=512, log_path=log)
    url = first.start()
    with urllib.request.urlopen(f"{url}/models", timeout=5) as resp:
        assert resp.status == 200
    orphan = first.proc  # the build "dies" here without calling stop()
    assert first.pidfile.read_text().strip() == str(orphan.pid)

    second = EmbeddedServer(n_ctx=512, log_path=log)
    try:
        second.start()
        assert orphan.wait(timeout=15) is not None  # the stale server was stopped
        assert second.pidfile.read_text().strip() == str(second.proc.pid)
    finally:
        second.stop()
    assert not second.pidfile.exists() and second.proc is None


def test_an_unrelated_process_named_in_a_stale_pidfile_is_left_alone(tmp_path):
    log = tmp_path / "logs" / "llama-server.log"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        server = EmbeddedServer(n_ctx=512, log_path=log)
        log.parent.mkdir(parents=True)
        server.pidfile.write_text(f"{bystander.pid}\n")
        server.start()
        server.stop()
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()
