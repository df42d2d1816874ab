"""Snapshots protect their own MANIFEST: verify re-derives what the MANIFEST claims, prints
the snapshot's digest, refuses entries outside the snapshot; parents' digests are recorded;
a build killed while exporting leaves nothing behind for good; diff sees changed rows."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from health_orsc.cli import main
from health_orsc.snapshot.store import load_manifest
from tests.conftest import DATA, croissant_check, fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply as reply

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    """One small snapshot, built once; tests work on copies of it."""
    tmp = tmp_path_factory.mktemp("snap")
    server = FakeOpenAI(reply).start()
    cfg = fake_config(tmp, server.base_url)
    assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
    yield {"tmp": tmp, "cfg": cfg, "server": server, "path": tmp / "outputs" / "snapshots" / "v1"}
    server.stop()


def _copy(snap: dict, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(snap["path"], copy)
    return copy


def _edit_manifest(snapshot: Path, change) -> None:
    path = snapshot / "MANIFEST.json"
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data, indent=2))


def _verify(capsys, snapshot: Path, *extra: str) -> tuple[int, str]:
    rc = main(["verify", str(snapshot), *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_verify_prints_the_digest_and_checks_an_expected_one(snap, capsys):
    rc, out = _verify(capsys, snap["path"])
    digest = load_manifest(snap["path"]).digest
    assert rc == 0 and f"digest: {digest}" in out and digest.startswith("sha256:")
    assert _verify(capsys, snap["path"], "--digest", digest)[0] == 0
    rc, out = _verify(capsys, snap["path"], "--digest", "sha256:" + "0" * 64)
    assert rc == 1 and "differs from the expected" in out


@pytest.mark.parametrize("change,message", [
    (lambda m: m["counts"]["kept"]["self_harm"].update(easy=99), "counts.kept differ"),
    (lambda m: m["counts"].update(validation_sample=1), "counts.validation_sample"),
    (lambda m: m["fingerprints"].update(self_harm="0" * 16), "fingerprints.self_harm is not the hash"),
    (lambda m: m["config"]["jury"].update(min_benign=3), "differ from its config"),
    (lambda m: m["config"]["roles"]["judge_1"].update(model="other"), "differ from its config"),
    (lambda m: m["config"]["sample"].update(per_stratum=2), "sample settings"),
    (lambda m: m["jury_calibration"]["judge_3"].update(labelled_harmful=0), "jury_calibration differs"),
    (lambda m: m["jury_agreement"].update(fleiss_kappa=0.99), "jury_agreement differs"),
])
def test_an_edited_manifest_fails_verify(snap, tmp_path, capsys, change, message):
    copy = _copy(snap, tmp_path)
    _edit_manifest(copy, change)
    rc, out = _verify(capsys, copy)
    assert rc == 1 and message in out, out


def test_the_categories_definitions_travel_with_the_snapshot(snap, tmp_path, capsys):
    """taxonomy.json holds what annotators are shown; re-signed edits are still caught."""
    copy = _copy(snap, tmp_path)
    path = copy / "taxonomy.json"
    entries = json.loads(path.read_text())
    assert [e["id"] for e in entries] == ["self_harm", "drug_abuse"]
    entries[0]["harm_definition"] = "Anything about medicine at all."
    path.write_text(json.dumps(entries))
    data = path.read_bytes()
    _edit_manifest(copy, lambda m: m["files"].update(
        {"taxonomy.json": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}))
    rc, out = _verify(capsys, copy)
    assert rc == 1 and "taxonomy.json: the entry of self_harm is not the one it was built under" in out


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(files=list(m["files"])), "files"),
    (lambda m: [m], "holds a JSON list"),
    (lambda m: m["files"].update({"../outside.txt": next(iter(m["files"].values()))}),
     "points outside the snapshot"),
])
def test_a_malformed_manifest_is_a_clear_failure(snap, tmp_path, capsys, change, message):
    copy = _copy(snap, tmp_path)
    (tmp_path / "outside.txt").write_text("not part of the snapshot")
    _edit_manifest(copy, change)
    rc, out = _verify(capsys, copy)
    assert rc == 1 and message in out and "Traceback" not in out, out
    assert len(out.splitlines()) <= 4


@pytest.mark.parametrize("rel", ["validation_sample.csv", "prompts.parquet", "rejected.jsonl", "README.md",
                                 "data/drug_abuse.jsonl", "taxonomy.json"])
def test_a_file_removed_with_its_manifest_entry_is_reported(snap, tmp_path, capsys, rel):
    """Both the file and its entry gone: the checksums agree, yet the snapshot is not whole."""
    copy = _copy(snap, tmp_path)
    (copy / rel).unlink()
    _edit_manifest(copy, lambda m: m["files"].pop(rel) and None)
    rc, out = _verify(capsys, copy)
    assert rc == 1 and f"{rel}: missing, and not listed in MANIFEST.json" in out, out
    assert "Traceback" not in out


def test_a_new_snapshot_records_its_schema_version(snap):
    """snapshot.compat: version 2 snapshots must hold taxonomy.json (version 1 ones may lack
    it); version 3 ones a rubric on every kept row; version 4 ones what the Hub shows;
    version 5 ones each sampled item's stratum and inclusion probability."""
    assert json.loads((snap["path"] / "MANIFEST.json").read_text())["schema_version"] == 5


def test_verify_notices_an_inclusion_probability_that_is_not_the_draws(snap, tmp_path, capsys):
    copy = _copy(snap, tmp_path)
    sample = copy / "validation_sample.csv"
    with sample.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["stratum"] == f"{r['source']}:{r['category']}:{r['level'] or 'unleveled'}" for r in rows)
    assert all(float(r["inclusion_probability"]) == pytest.approx(
        sum(o["stratum"] == r["stratum"] for o in rows) / _stratum_size(copy, r)) for r in rows)
    rows[0]["inclusion_probability"] = "0.5"  # a weight the draw did not give
    with sample.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _edit_manifest(copy, lambda m: m["files"]["validation_sample.csv"].update(
        sha256=hashlib.sha256(sample.read_bytes()).hexdigest(), bytes=sample.stat().st_size))
    rc, out = _verify(capsys, copy)
    assert rc == 1
    assert "validation_sample.csv: the strata or inclusion probabilities are not the draw's" in out


def test_an_uncertainty_sample_is_recorded_and_redrawn_by_verify(snap, tmp_path, capsys):
    cfg = fake_config(tmp_path, snap["server"].base_url, sample={"per_stratum": 2, "design": "uncertainty"})
    assert main(["build", "--config", str(cfg), "--name", "unsure"]) == 0
    path = tmp_path / "outputs" / "snapshots" / "unsure"
    rc, out = _verify(capsys, path)
    assert rc == 0, out
    with (path / "validation_sample.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(0 < float(r["inclusion_probability"]) <= 1 for r in rows)
    assert "with a probability rising with the jury's uncertainty" in (path / "README.md").read_text()
    # a draw the design did not make: verify redraws the sample and notices
    _edit_manifest(path, lambda m: m["config"]["sample"].update(uncertainty_floor=0.9, seed=5))
    rc, out = _verify(capsys, path)
    assert rc == 1 and "validation_sample.csv" in out


def _stratum_size(snapshot: Path, item: dict) -> int:
    """How many rows of the snapshot are in the item's sampling stratum."""
    source = "prompts" if item["source"] == "kept" else "rejected"
    rows = [json.loads(line) for line in (snapshot / f"{source}.jsonl").read_text().splitlines()]
    return sum(r["category"] == item["category"] and (r["level"] or "") == item["level"]
               and (source == "prompts" or r["reason"] in ("jury_harmful", "source_harmful")) for r in rows)


def test_a_built_snapshot_is_ready_for_the_hub(snap, tmp_path, capsys):
    """Typed parquet configs per category, a content warning, an access prompt and a
    citation on the card; croissant.json that mlcroissant validates and reads; and verify
    notices a croissant.json or a category parquet that no longer matches."""
    import pyarrow.parquet as pq

    path = snap["path"]
    card = (path / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    configs = {c["config_name"]: c["data_files"] for c in header["configs"]}
    assert configs["all"] == [{"split": "test", "path": "prompts.parquet"}]
    for cat in ("self_harm", "drug_abuse"):
        assert configs[cat] == [{"split": "test", "path": f"data/{cat}.parquet"}]
        rows = [json.loads(line) for line in (path / "data" / f"{cat}.jsonl").read_text().splitlines()]
        table = pq.read_table(path / "data" / f"{cat}.parquet", columns=["id", "level", "prompt", "rubric"])
        def key(r: dict) -> tuple:
            return r["id"], r["level"], r["prompt"], len(r["rubric"]["criteria"])
        assert [key(r) for r in table.to_pylist()] == [key(r) for r in rows]
    assert header["extra_gated_prompt"] and "Content warning" in card and "zhang2026healthorscbench" in card
    checked = croissant_check(path / "croissant.json", ["all", "self_harm"])
    assert checked["errors"] == [] and checked["records"] == {
        "all": pq.read_metadata(path / "prompts.parquet").num_rows,
        "self_harm": pq.read_metadata(path / "data" / "self_harm.parquet").num_rows}
    croissant = json.loads((path / "croissant.json").read_text())
    assert "rai:dataCollection" in croissant and "Synthetic" in croissant["rai:dataCollection"]

    copy = _copy(snap, tmp_path)
    (copy / "croissant.json").write_text((copy / "croissant.json").read_text().replace(
        croissant["distribution"][0]["sha256"], "0" * 64))
    _edit_manifest(copy, lambda m: m["files"]["croissant.json"].update(
        sha256=hashlib.sha256((copy / "croissant.json").read_bytes()).hexdigest(),
        bytes=(copy / "croissant.json").stat().st_size))
    rc, out = _verify(capsys, copy)
    assert rc == 1 and "croissant.json: the sha256 of prompts.parquet is not the file's" in out, out


def test_a_base_build_records_the_parents_digest_and_bad_bases_are_refused(snap, tmp_path, capsys):
    copy = _copy(snap, tmp_path)
    _edit_manifest(copy, lambda m: m["counts"].update(validation_sample=0))
    rc = main(["build", "--config", str(snap["cfg"]), "--base", str(copy), "--name", "never"])
    assert rc == 2 and "fails verification" in capsys.readouterr().err
    assert main(["build", "--config", str(snap["cfg"]), "--base", str(snap["path"]), "--name", "v1b"]) == 0
    manifest = load_manifest(snap["path"].parent / "v1b")
    assert manifest.base.name == "v1" and manifest.base.digest == load_manifest(snap["path"]).digest
    assert manifest.built == []  # nothing changed: every category carried over


def test_carried_rows_keep_the_taxonomy_version_they_were_built_under(snap, tmp_path, capsys):
    seeds = tmp_path / "seeds"
    shutil.copytree(DATA / "seeds", seeds)
    taxonomy = yaml.safe_load((seeds / "taxonomy.yaml").read_text())
    taxonomy["version"] = 2  # a version bump alone: no category's entry changed
    (seeds / "taxonomy.yaml").write_text(yaml.safe_dump(taxonomy, sort_keys=False))
    cfg = yaml.safe_load(snap["cfg"].read_text())
    cfg["seeds_dir"] = str(seeds)
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["build", "--config", str(tmp_path / "v2.yaml"), "--base", str(snap["path"]),
                 "--name", "tax-v2"]) == 0
    out = capsys.readouterr().err  # the plan is a progress note
    assert "self_harm: carried over from the base snapshot (taxonomy version 1)" in out
    v2 = snap["path"].parent / "tax-v2"
    manifest = load_manifest(v2)
    assert manifest.taxonomy_version == 2 and manifest.taxonomy_versions == {"self_harm": 1, "drug_abuse": 1}
    kept = json.loads((v2 / "prompts.jsonl").read_text().splitlines()[0])
    assert main(["provenance", kept["id"], "--outputs", str(snap["tmp"] / "outputs"),
                 "--snapshot", str(v2), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["taxonomy_version"] == 1 and report["carried_from"] == "v1"


def test_diff_reports_rows_whose_votes_changed(snap, tmp_path, capsys):
    """A juror on another model: same prompts (same ids), other votes: changed, not unchanged."""
    cfg = yaml.safe_load(snap["cfg"].read_text())
    cfg["roles"]["judge_1"]["model"] = "judge-1-v2"
    (tmp_path / "judge.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["build", "--config", str(tmp_path / "judge.yaml"), "--name", "judge-v2"]) == 0
    capsys.readouterr()
    assert main(["diff", str(snap["path"]), str(snap["path"].parent / "judge-v2"), "--json"]) == 0
    report = {c["category"]: c for c in json.loads(capsys.readouterr().out)["categories"]}
    for cat in ("self_harm", "drug_abuse"):
        c = report[cat]
        assert c["status"] == "changed" and c["changed_inputs"] == ["roles"]
        assert not c["added"] and not c["removed"] and c["unchanged"] == 0
        assert c["changed"] and all(fields == ["votes"] for fields in c["changed"].values())


def test_a_build_killed_while_exporting_leaves_no_temp_dir_for_good(snap, tmp_path):
    snapshots = snap["path"].parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = snapshots / f".tmp-killed-{dead}"
    stale.mkdir()
    (stale / "prompts.jsonl").write_text("half written\n")
    live = snapshots / f".tmp-running-{os.getpid()}"  # a build still exporting: left alone
    live.mkdir()
    try:
        assert main(["build", "--config", str(snap["cfg"]), "--name", "after-kill"]) == 0
        assert not stale.exists() and live.is_dir()
    finally:
        shutil.rmtree(live, ignore_errors=True)


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                    "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True, capture_output=True)


def test_a_git_clone_verifies_and_only_clone_metadata_is_ignored(snap, tmp_path, capsys):
    """What people download is a clone (git, or the Hub's: .gitattributes, .cache/huggingface/):
    it verifies with the same digest; any other unlisted file, or an edited byte, fails."""
    published = _copy(snap, tmp_path)
    _git("init", cwd=published)
    (published / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    _git("add", "-A", cwd=published)
    _git("commit", "-m", "publish", cwd=published)
    clone = tmp_path / "clone"
    _git("clone", "-q", str(published), str(clone), cwd=tmp_path)
    (clone / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (clone / ".cache" / "huggingface" / "download" / "prompts.jsonl.metadata").write_text("etag\n")
    rc, out = _verify(capsys, clone)
    assert rc == 0 and f"digest: {load_manifest(snap['path']).digest}" in out, out

    for extra in ("notes.txt", ".cache/other/x", ".github/workflow.yml", "data/.gitattributes"):
        (clone / extra).parent.mkdir(parents=True, exist_ok=True)
        (clone / extra).write_text("x")
        rc, out = _verify(capsys, clone)
        assert rc == 1 and f"{extra}: not listed in MANIFEST.json" in out, out
        (clone / extra).unlink()
    data = clone / "prompts.jsonl"
    data.write_bytes(data.read_bytes().replace(b"?", b".", 1))
    rc, out = _verify(capsys, clone)
    assert rc == 1 and "prompts.jsonl: sha256 differs" in out, out
