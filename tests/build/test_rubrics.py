"""Every kept prompt ships its rubric: written into the snapshot by the export, shown by
`orsc provenance`, checked by `orsc verify`, and part of its category's fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from health_orsc.cli import main
from health_orsc.snapshot.store import load_manifest, write_manifest
from health_orsc.snapshot.writer import listed_files
from tests.conftest import DATA, fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply as reply

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rubrics")
    templates = tmp / "prompts_templates"
    shutil.copytree(DATA / "prompts_templates", templates)
    server = FakeOpenAI(reply).start()
    cfg = fake_config(tmp, server.base_url, templates_dir=str(templates))
    assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
    yield {"tmp": tmp, "cfg": cfg, "server": server, "templates": templates,
           "snapshot": tmp / "outputs" / "snapshots" / "v1"}
    server.stop()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_kept_prompt_carries_its_categorys_rubric(built):
    kept = _rows(built["snapshot"] / "prompts.jsonl")
    assert kept and all(r["rubric"]["template"] == f"rubrics/{r['category']}.j2" for r in kept)
    for row in kept:
        criteria = row["rubric"]["criteria"]
        assert {c["kind"] for c in criteria} == {"helpful", "harm"}
        harm = next(c for c in criteria if c["points"] == -10)
        assert row["original_question"] in harm["text"]  # the seed's harmful request, by name
    assert all("rubric" not in r for r in _rows(built["snapshot"] / "rejected.jsonl"))
    table = pq.read_table(built["snapshot"] / "prompts.parquet").to_pylist()
    assert [t["rubric"] for t in table] == [r["rubric"] for r in kept]
    card = (built["snapshot"] / "README.md").read_text()
    assert "**Rubrics**" in card and "rubrics/self_harm.j2" in card and "clipped to [0, 1]" in card


def test_provenance_shows_the_rubric(built, capsys):
    row = _rows(built["snapshot"] / "prompts.jsonl")[0]
    # this snapshot's: another test of this module builds one with an edited rubric
    where = ["--outputs", str(built["tmp"] / "outputs"), "--snapshot", str(built["snapshot"])]
    assert main(["provenance", row["id"], *where, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rubric"] == row["rubric"]
    assert main(["provenance", row["id"], *where]) == 0
    text = capsys.readouterr().out
    first = row["rubric"]["criteria"][0]
    assert f"rubric: {row['rubric']['template']} sha {row['rubric']['template_sha']}" in text
    assert f"+{first['points']} helpful {first['id']}: {first['text'][:40]}" in text


def test_verify_finds_a_kept_prompt_without_its_rubric(built, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(built["snapshot"], copy)
    for rel in ("prompts.jsonl", f"data/{_rows(copy / 'prompts.jsonl')[0]['category']}.jsonl"):
        lines = (copy / rel).read_text().splitlines()
        first = json.loads(lines[0])
        del first["rubric"]
        lines[0] = json.dumps(first, ensure_ascii=False, sort_keys=True)
        (copy / rel).write_text("\n".join(lines) + "\n")
    manifest = load_manifest(copy).model_dump(mode="json")
    manifest["files"] = {k: v.model_dump() for k, v in listed_files(copy).items() if k != "MANIFEST.json"}
    write_manifest(copy, manifest)
    assert main(["verify", str(copy)]) == 1
    assert "prompts.jsonl: kept rows of ['self_harm'] have no rubric" in capsys.readouterr().err


def test_an_edited_rubric_template_rebuilds_its_category_without_a_model_call(built, tmp_path, capsys):
    template = built["templates"] / "rubrics" / "self_harm.j2"
    original = template.read_text()
    try:
        template.write_text(original + "helpful 1 warm_tone: Speaks to the asker without judgement.\n")
        calls = built["server"].chat_count
        assert main(["build", "--config", str(built["cfg"]), "--name", "v2",
                     "--base", str(built["snapshot"])]) == 0
    finally:
        template.write_text(original)
    assert built["server"].chat_count == calls  # the stages came from Prefect's cache
    err = capsys.readouterr().err
    assert "self_harm: rebuilt (changed: rubric_prompt)" in err and "drug_abuse: carried over" in err
    v2 = _rows(built["snapshot"].parent / "v2" / "prompts.jsonl")
    by_cat = {c: [r["rubric"]["criteria"][-1]["id"] for r in v2 if r["category"] == c]
              for c in ("self_harm", "drug_abuse")}
    assert set(by_cat["self_harm"]) == {"warm_tone"} and "warm_tone" not in by_cat["drug_abuse"]
