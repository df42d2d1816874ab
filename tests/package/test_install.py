"""The package installs like a real one: a wheel built from a copy of the source, installed
into a fresh virtual environment without the source tree, writes a project with `orsc init`
and builds it against a fake endpoint; the defaults it reads are the wheel's package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from tests.conftest import REPO
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply as reply

pytestmark = pytest.mark.slow


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _fake_project(config: dict, base_url: str) -> dict:
    """The init'd config with every role on the fake endpoint (verdict jurors, small run)."""
    config["endpoints"] = {"fake": {"base_url": base_url, "max_concurrency": 4, "max_retries": 2,
                                    "timeout_s": 10}}
    for name, role in config["roles"].items():
        if role.get("scoring") == "classifier":
            continue  # no model call: the classifier juror init copied out of the wheel judges as it is
        role.update(endpoint="fake", model=name.replace("_", "-").replace("generator", "gen-model"))
        role.pop("scoring", None)
    config.update(categories=["self_harm", "drug_abuse"], dedup={"threshold": 0.99})
    config["generation"]["seeds_per_category"] = 2
    return config


def test_a_wheel_in_a_fresh_venv_inits_and_builds_a_project(tmp_path):
    src = tmp_path / "source"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp_path / "dist", src])
    [wheel] = (tmp_path / "dist").glob("health_orsc-*.whl")
    shipped = zipfile.ZipFile(wheel).namelist()
    for data in ("configs/default.yaml", "seeds/taxonomy.yaml", "seeds/self_harm.yaml", "gold/jury.csv",
                 "gold/answers.csv", "prompts_templates/generate/hard.j2",
                 "prompts_templates/graders/xstest.j2"):
        assert f"health_orsc/data/{data}" in shipped

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv])  # the dependencies: this machine's
    _run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel])
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    where = _run([venv / "bin" / "python", "-c", "import health_orsc; print(health_orsc.__file__)"],
                 cwd=work, env=env).stdout
    assert where.startswith(str(venv)), where  # the wheel, not the checkout
    version = _run([venv / "bin" / "python", "-m", "health_orsc", "--version"], cwd=work, env=env).stdout
    assert version.strip() == "orsc 0.1.0"

    _run([venv / "bin" / "orsc", "init", "demo"], cwd=work, env=env)
    config_path = work / "demo" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert (config["seeds_dir"], config["templates_dir"], config["outputs_dir"]) == (
        "seeds", "prompts_templates", "outputs")
    server = FakeOpenAI(reply).start()
    try:
        config_path.write_text(yaml.safe_dump(_fake_project(config, server.base_url)))
        out = _run([venv / "bin" / "orsc", "build", "--config", "demo/config.yaml", "--name", "first"],
                   cwd=work, env=env)
    finally:
        server.stop()
    snapshot = work / "demo" / "outputs" / "snapshots" / "first"
    assert (snapshot / "MANIFEST.json").is_file(), out.stdout[-2000:]
    _run([venv / "bin" / "orsc", "verify", snapshot], cwd=work, env=env)
    assert not (work / "outputs").exists()  # the project's config names its own outputs
