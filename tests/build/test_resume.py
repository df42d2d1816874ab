"""A build killed with SIGKILL in the middle of the jury stage, started again, finishes
without repeating completed model calls, and its snapshot equals an uninterrupted build's."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from health_orsc.cli import main
from tests.conftest import ENDPOINT_EMBEDDER, fake_config
from tests.fakes.endpoint import FakeOpenAI

pytestmark = pytest.mark.slow


def _files(snapshot: Path) -> dict[str, bytes]:
    return {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in sorted(snapshot.rglob("*"))
            if p.is_file() and p.name != "MANIFEST.json"}


def _build_cmd(cfg: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "health_orsc", "build", "--config", str(cfg), "--name", name]


def test_killed_build_resumes_from_the_cache(prefect_api, tmp_path):
    fake = FakeOpenAI(delay_s=0.2).start()
    try:
        cfg = fake_config(tmp_path, fake.base_url, **ENDPOINT_EMBEDDER)
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": prefect_api}
        log = tmp_path / "killed.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(_build_cmd(cfg, "resumed"), env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        # 12 generation calls come first; kill once the jury has answered a few
        deadline = time.monotonic() + 240
        while fake.chat_count < 12 + 9 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None and fake.chat_count >= 12 + 9, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        before_kill = [json.dumps(r, sort_keys=True) for r in fake.requests]
        assert not (tmp_path / "outputs" / "snapshots" / "resumed").exists()
        with sqlite3.connect(tmp_path / "outputs" / "cache" / "llm.sqlite") as db:
            [(committed,)] = db.execute("SELECT COUNT(*) FROM calls").fetchall()

        assert subprocess.run(_build_cmd(cfg, "resumed"), env=env, capture_output=True,
                              timeout=300).returncode == 0
        after = [json.dumps(r, sort_keys=True) for r in fake.requests[len(before_kill):]]
        repeated = set(before_kill) & set(after)
        # only calls not yet in the request cache at the kill may be sent again: those in
        # flight (max_concurrency 4) and replies not yet committed by the cache's writer
        assert 0 < committed and len(repeated) <= len(set(before_kill)) - committed, (
            len(repeated), len(set(before_kill)), committed)
        total_distinct = len(set(before_kill) | set(after))
        assert len(set(before_kill)) < total_distinct  # it really was killed before the end

        # the same build, uninterrupted, into a fresh outputs dir against the same endpoint
        other = tmp_path / "uninterrupted"
        other.mkdir()
        cfg2 = fake_config(other, fake.base_url, **ENDPOINT_EMBEDDER)
        sent = fake.chat_count
        assert main(["build", "--config", str(cfg2), "--name", "resumed"]) == 0
        assert fake.chat_count - sent == total_distinct  # nothing was lost or added by resuming
    finally:
        fake.stop()
    assert _files(tmp_path / "outputs" / "snapshots" / "resumed") == _files(
        other / "outputs" / "snapshots" / "resumed")
