"""`orsc serve` + `prefect deployment run 'build-benchmark/<name>'` against a real Prefect
server on a loopback port, driven the way a user drives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from health_orsc.cli import main
from health_orsc.llm.embedded import free_port
from tests.conftest import fake_config, panel, stop_process_group
from tests.fakes.endpoint import FakeOpenAI

pytestmark = pytest.mark.slow


def _wait_for(check, timeout_s: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


# through this interpreter: the suite also passes as `.venv/bin/python -m pytest`, no venv activated
PREFECT = [sys.executable, "-m", "prefect"]

def test_served_deployment_runs_through_a_prefect_server(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    fake = FakeOpenAI().start()
    cfg = fake_config(tmp_path, fake.base_url, **panel({"panel": "panel-model"}, max_repairs=0))
    procs = []
    try:
        with server_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for(lambda: _healthy(api), 240, "the Prefect server", [server_log])
        with serve_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "health_orsc", "serve", "--config", str(cfg),
                 "--deployment", "test"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

        def deployment_exists() -> bool:
            return subprocess.run([*PREFECT, "deployment", "inspect", "build-benchmark/test"],
                                  env=env, capture_output=True, timeout=60).returncode == 0

        _wait_for(deployment_exists, 180, "the served deployment", [serve_log])
        run = subprocess.run(
            [*PREFECT, "deployment", "run", "build-benchmark/test", "--param", "name=served",
             "--watch", "--watch-timeout", "300"],
            env=env, capture_output=True, text=True, timeout=360)
        snapshot = tmp_path / "outputs" / "snapshots" / "served"
        assert run.returncode == 0, run.stdout + run.stderr + serve_log.read_text()[-3000:]
        assert snapshot.is_dir()
        assert main(["verify", str(snapshot)]) == 0
        assert fake.chat_count > 0
        # the evaluation flow is served beside it: the fake panel answers, its grades stay
        # unparseable (the default fake replies a juror's verdict), and the run is written
        run = subprocess.run(
            [*PREFECT, "deployment", "run", "evaluate-benchmark/test", "--param", f"snapshot={snapshot}",
             "--param", "name=served-eval", "--watch", "--watch-timeout", "300"],
            env=env, capture_output=True, text=True, timeout=360)
        assert run.returncode == 0, run.stdout + run.stderr + serve_log.read_text()[-3000:]
        run_dir = tmp_path / "outputs" / "evaluations" / "served-eval"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["models"]["panel"]["unscored"] == metrics["models"]["panel"]["benign"] > 0
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        fake.stop()
