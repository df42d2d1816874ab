"""A disk that fills while the snapshot is being written: the build exits 1 with one
message saying so, leaves no snapshot and no temp directory, and the same command run
again with room finishes from the caches without a model call."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply

pytestmark = pytest.mark.slow


def test_a_disk_full_during_export_leaves_no_partial_snapshot(prefect_api, tmp_path):
    server = FakeOpenAI(build_reply).start()
    try:
        cfg = fake_config(tmp_path, server.base_url)
        snapshots = tmp_path / "outputs" / "snapshots"
        snapshots.mkdir(parents=True)
        listing = tmp_path / "left-behind.txt"
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": prefect_api}
        build = [sys.executable, "-m", "health_orsc", "build", "--config", str(cfg), "--name", "v1"]
        # The snapshots directory is a 16 KiB tmpfs in a mount namespace of the build's own
        # (everything else of outputs/ is on the real disk); what is left in it is listed
        # before the namespace, and the tmpfs with it, goes away.
        script = ('mount -t tmpfs -o size=16k tmpfs "$0" || exit 99; "$@"; rc=$?; ls -A "$0" > "$LISTING";'
                  ' exit $rc')
        full = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script, str(snapshots),
                               *build], env={**env, "LISTING": str(listing)}, capture_output=True, text=True,
                              timeout=600)
        assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-3000:]
        assert "the disk filled while snapshot 'v1' was being written; nothing of it was kept" in full.stderr
        assert "Traceback" not in full.stderr
        assert listing.read_text() == ""  # no snapshot, no .tmp-v1-<pid>
        calls = server.chat_count
        assert calls > 0

        again = subprocess.run(build, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        server.stop()
    assert server.chat_count == calls  # every call came from the request cache
    assert subprocess.run([sys.executable, "-m", "health_orsc", "verify", str(snapshots / "v1")],
                          capture_output=True, env=env).returncode == 0
