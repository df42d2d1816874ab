"""`orsc publish`: a validated snapshot goes to a local stand-in of the Hub's HTTP API
(tests/fakes/hub.py, through HF_ENDPOINT) unchanged and in one commit; a git clone of the
repo verifies with the snapshot's digest, its croissant.json passes mlcroissant's
validator, and bad publishes stop before anything is uploaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from health_orsc.cli import main
from health_orsc.snapshot.store import load_manifest, read_jsonl_rows
from tests.conftest import croissant_check, csv_rows, fake_config, write_csv
from tests.fakes.hub import FakeHub

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "imports"
TOKEN = "hf_stand_in_token"


@pytest.fixture
def hub(tmp_path):
    server = FakeHub(tmp_path / "hub", TOKEN).start()
    yield server
    server.stop()


def _orsc(hub: FakeHub, tmp_path: Path, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    """`orsc` in its own process, as a user runs it: huggingface_hub reads HF_ENDPOINT at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "health_orsc", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def _validated(tmp_path: Path) -> Path:
    """XSTest imported, its sample labelled by two people, validated: a snapshot with figures."""
    cfg = fake_config(tmp_path, "http://127.0.0.1:9/v1")
    assert main(["import", "--format", "xstest", str(FIXTURES / "xstest_prompts.csv"), "--name", "xs",
                 "--config", str(cfg)]) == 0
    snap = tmp_path / "outputs" / "snapshots" / "xs"
    assert main(["annotate", str(snap), "--out", str(tmp_path / "tasks")]) == 0
    labels = []
    for f in sorted((tmp_path / "tasks").glob("*.csv")):
        rows = csv_rows(f)
        for r in rows:
            r["label"] = "benign"
        labels.append(str(write_csv(tmp_path / f"labelled-{f.name}", rows)))
    assert main(["validate", str(snap), *labels, "--name", "xs-validated"]) == 0
    return tmp_path / "outputs" / "snapshots" / "xs-validated"


def test_a_published_snapshot_is_the_snapshot_and_its_clone_verifies(hub, tmp_path):
    snap = _validated(tmp_path)
    digest = load_manifest(snap).digest
    run = _orsc(hub, tmp_path, "publish", str(snap), "--repo", "safety-lab/xstest-audit", "--gated")
    assert run.returncode == 0, run.stderr
    assert f"published {snap}" in run.stdout and TOKEN not in run.stdout + run.stderr
    repo = "safety-lab/xstest-audit"
    assert hub.created[repo]["type"] == "dataset" and hub.settings[repo]["gated"] == "auto"
    assert hub.commits(repo) == 2  # the Hub's initial commit, then the snapshot in one commit
    arrived = hub.files(repo)
    local = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
    assert {k: v for k, v in arrived.items() if k != ".gitattributes"} == local
    card = arrived["README.md"].decode()
    assert "extra_gated_prompt:" in card and "Content warning" in card
    assert "## Validation" in card and "## Citation" in card and "rottger2024xstest" in card
    assert "path: data/homonyms.parquet" in card and "split: test" in card

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(hub.repo_dir(repo)), str(clone)], check=True)
    assert (clone / ".git").is_dir() and (clone / ".gitattributes").is_file()
    assert main(["verify", str(clone), "--digest", digest]) == 0
    # Croissant: mlcroissant reads the clone's metadata and its records without an error
    checked = croissant_check(clone / "croissant.json", ["all", "privacy"])
    assert checked["errors"] == []
    assert checked["records"] == {"all": len(read_jsonl_rows(clone / "prompts.jsonl")),
                                  "privacy": len(read_jsonl_rows(clone / "data" / "privacy.jsonl"))}
    edited = clone / "data" / "privacy.parquet"
    data = bytearray(edited.read_bytes())
    data[len(data) // 2] ^= 1
    edited.write_bytes(bytes(data))
    assert main(["verify", str(clone)]) == 1

    again = _orsc(hub, tmp_path, "publish", str(snap), "--repo", repo, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["commit"] is None and hub.commits(repo) == 2


def test_bad_publishes_stop_before_any_upload(hub, tmp_path):
    snap = _validated(tmp_path)
    no_token = _orsc(hub, tmp_path, "publish", str(snap), "--repo", "safety-lab/x", token=None)
    assert no_token.returncode == 2 and "HF_TOKEN" in no_token.stderr and not hub.requests

    bad_id = _orsc(hub, tmp_path, "publish", str(snap), "--repo", "not a repo")
    assert bad_id.returncode == 2 and "is not a repo id" in bad_id.stderr and not hub.requests

    base = tmp_path / "outputs" / "snapshots" / "xs"
    assert _orsc(hub, tmp_path, "publish", str(base), "--repo", "safety-lab/taken").returncode == 0
    commits = hub.commits("safety-lab/taken")
    other = _orsc(hub, tmp_path, "publish", str(snap), "--repo", "safety-lab/taken")
    assert other.returncode == 2 and "already holds other files" in other.stderr
    assert hub.commits("safety-lab/taken") == commits

    broken = tmp_path / "broken"
    shutil.copytree(snap, broken)
    (broken / "README.md").write_text("edited\n")
    failed = _orsc(hub, tmp_path, "publish", str(broken), "--repo", "safety-lab/broken")
    assert failed.returncode == 2 and "fails verification" in failed.stderr
    assert not hub.repo_dir("safety-lab/broken").exists()
