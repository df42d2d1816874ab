"""Fingerprints follow what shapes the output: editing the CLI rebuilds nothing; editing
jury.py re-runs the jury stage only. The builds run from a copy of the source tree, so
the test can edit the code without touching the checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from health_orsc.build.fingerprint import PACKAGE_DIR, STAGE_MODULES, code_version, stage_sources
from tests.conftest import ENDPOINT_EMBEDDER, fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply as reply

pytestmark = pytest.mark.slow


def test_stage_code_hashes_cover_only_their_modules(tmp_path):
    src = tmp_path / "health_orsc"
    shutil.copytree(PACKAGE_DIR, src, ignore=shutil.ignore_patterns("__pycache__"))
    before = {stage: code_version(stage, src) for stage in STAGE_MODULES}
    code_version.cache_clear()
    for unread in ("cli/app.py", "runtime/terminal.py", "audit/verify.py"):
        (src / unread).write_text((src / unread).read_text() + "\n# help text edited\n")
    assert {stage: code_version(stage, src) for stage in STAGE_MODULES} == before
    code_version.cache_clear()
    (src / "build/jury.py").write_text((src / "build/jury.py").read_text() + "\n# a jury change\n")
    after = {stage: code_version(stage, src) for stage in STAGE_MODULES}
    code_version.cache_clear()
    assert [s for s in STAGE_MODULES if after[s] != before[s]] == ["jury"]
    (src / "core/records.py").write_text((src / "core/records.py").read_text() + "\n# a record change\n")
    assert all(code_version(stage, src) != after[stage] for stage in STAGE_MODULES)  # read by every stage
    code_version.cache_clear()


def test_stage_sources_follow_the_imports():
    """A stage's code is its module and what it imports from the package, found in the source."""
    names = {s: {p.relative_to(PACKAGE_DIR).as_posix() for p in stage_sources(s)} for s in STAGE_MODULES}
    assert {"build/jury.py", "core/stats.py", "inputs/templates.py", "build/stages.py"} <= names["jury"]
    assert "build/jury.py" not in names["generate"] | names["dedup"]
    assert "cache/embeddings.py" in names["dedup"]
    unread = ("runtime/", "cli/", "flows/", "audit/")
    assert not any(n.startswith(unread) for ns in names.values() for n in ns)


def _build(src: Path, cfg: Path, env: dict, name: str, *extra: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "health_orsc", "build", "--config", str(cfg),
                           "--name", name, *extra], cwd=src, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr  # the summary, and the plan among the progress notes


def _cached(out: str) -> tuple[int, int, int]:
    """(model calls, stage tasks from Prefect's cache, stage tasks) from a build's output."""
    calls = int(re.search(r"model calls: (\d+)", out)[1])
    cached, total = map(int, re.search(r"from Prefect's cache: (\d+) of (\d+)", out).groups())
    return calls, cached, total


def test_editing_the_cli_rebuilds_nothing_and_editing_jury_py_only_the_jury(prefect_api, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PACKAGE_DIR, src / "health_orsc", ignore=shutil.ignore_patterns("__pycache__"))
    server = FakeOpenAI(reply).start()
    # one Prefect server for the five builds; each keeps its own results (Prefect's cache)
    env = {**os.environ, "PYTHONPATH": str(src), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": prefect_api}
    try:
        cfg = fake_config(tmp_path, server.base_url, **ENDPOINT_EMBEDDER)
        first = _build(src, cfg, env, "first")
        assert str(src / "health_orsc") in subprocess.run(
            [sys.executable, "-c", "import health_orsc; print(health_orsc.__file__)"], cwd=src, env=env,
            capture_output=True, text=True).stdout  # the builds really run the copy

        cli = src / "health_orsc" / "cli" / "build.py"
        cli.write_text(cli.read_text().replace("run the build-benchmark flow and write a snapshot",
                                               "build a benchmark snapshot"))
        assert _cached(_build(src, cfg, env, "after-cli-edit")) == (0, 7, 7)
        out = _build(src, cfg, env, "after-cli-edit-base", "--base",
                     str(tmp_path / "outputs" / "snapshots" / "first"))
        assert "self_harm: carried over" in out and "drug_abuse: carried over" in out

        jury = src / "health_orsc" / "build" / "jury.py"
        jury.write_text(jury.read_text() + "\n# a change to how verdicts are decided\n")
        calls, cached, total = _cached(_build(src, cfg, env, "after-jury-edit"))
        assert (calls, cached, total) == (0, 5, 7)  # generate, embed x2 and dedup cached; jury x2 re-run
        out = _build(src, cfg, env, "after-jury-edit-base", "--base",
                     str(tmp_path / "outputs" / "snapshots" / "first"))
        assert "self_harm: rebuilt (changed: code_jury)" in out
    finally:
        server.stop()
    assert _cached(first)[0] > 0


def test_min_similarity_keys_the_dedup_stage(tmp_path):
    """Changing generation.min_similarity must re-run dedup (where the check happens)."""
    from health_orsc.build.fingerprint import config_components, stage_fingerprint
    from health_orsc.core.config import load_config

    config = load_config(fake_config(tmp_path, "http://127.0.0.1:9/v1"))
    looser = config.model_copy(update={"generation": config.generation.model_copy(
        update={"min_similarity": 0.5})})
    other = {"dedup_model": "m", "code_dedup": "c"}
    keys = [stage_fingerprint("dedup", {**config_components(c), **other}) for c in (config, looser)]
    assert keys[0] != keys[1]
