"""Every kept prompt ships its rubric: written into the snapshot by the export, shown by
`orsc provenance`, checked by `orsc verify`, and part of its category's fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from health_orsc.cli import main
from health_orsc.snapshot.rowfiles import SnapshotFiles
from health_orsc.snapshot.store import load_manifest, write_manifest
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
    # parquet's struct has every field: the writer is null where the JSON lines leave it out
    assert all(t["rubric"].pop("writer") is None for t in table)
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
    manifest["files"] = {k: v.model_dump() for k, v in SnapshotFiles(copy).listed().items()
                         if k != "MANIFEST.json"}
    write_manifest(copy, manifest)
    assert main(["verify", str(copy)]) == 1
    assert "prompts.jsonl: kept rows of ['self_harm'] have no rubric" in capsys.readouterr().err


def test_an_edited_rubric_template_rebuilds_its_category_without_a_model_call(built, tmp_path, capsys):
    template = built["templates"] / "rubrics" / "self_harm.j2"
    original = template.read_text()
    try:
        # a template that reads the prompt: each prompt of a seed gets its own rubric
        template.write_text(original + 'helpful 1 warm_tone: Speaks to "{{ prompt }}" ({{ level }}).\n')
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
    own = [r for r in v2 if r["category"] == "self_harm"]
    assert len({r["seed_id"] for r in own}) < len(own)  # seeds with several prompts
    assert all(r["rubric"]["criteria"][-1]["text"] == f'Speaks to "{r["prompt"]}" ({r["level"]}).'
               for r in own)


def _writer_build(tmp: Path, base_url: str, model: str, name: str) -> Path:
    cfg = fake_config(tmp, base_url, generation={"rubric_writer": "writer"},  # roles merge with the fake's
                      roles={"writer": {"endpoint": "fake", "model": model, "prompt": "criteria.j2"}})
    assert main(["build", "--config", str(cfg), "--name", name]) == 0
    return tmp / "outputs" / "snapshots" / name


def test_a_rubric_writer_adds_prompt_specific_criteria_once_per_kept_prompt(tmp_path, capsys):
    server = FakeOpenAI(reply).start()
    try:
        snap = _writer_build(tmp_path, server.base_url, "writer-model", "v1")
        asked = [r for r in server.requests if r["model"] == "writer-model"]
        kept = _rows(snap / "prompts.jsonl")
        assert kept and len(asked) == len(kept)  # one call per kept prompt, none for rejected ones
        for row in kept:
            rubric = row["rubric"]
            ids = [c["id"] for c in rubric["criteria"]]
            # after the template's criteria
            assert ids[-2:] == ["answers_this_question", "specific_harm"] and len(ids) > 2
            assert row["prompt"] in rubric["criteria"][-1]["text"]
            writer = rubric["writer"]
            assert writer["model"].startswith("writer-model@") and writer["rejected"] is None
            assert writer["added"] == ids[-2:] and writer["template"] == "rubric_writers/criteria.j2"
            assert len(writer["calls"]) == 1
        assert main(["verify", str(snap)]) == 0
        card = (snap / "README.md").read_text()
        assert f"added prompt-specific criteria after the template's to {len(kept)} of them" in card
        # the same build again: every draft comes from the cache
        _writer_build(tmp_path, server.base_url, "writer-model", "v2")
        assert len([r for r in server.requests if r["model"] == "writer-model"]) == len(asked)
        assert _rows(tmp_path / "outputs" / "snapshots" / "v2" / "prompts.jsonl") == kept
    finally:
        server.stop()


def test_a_draft_that_repeats_a_template_id_is_rejected_and_recorded(tmp_path):
    server = FakeOpenAI(reply).start()
    try:
        snap = _writer_build(tmp_path, server.base_url, "clash-writer-model", "v1")
    finally:
        server.stop()
    for row in _rows(snap / "prompts.jsonl"):
        rubric = row["rubric"]
        assert "answers_this_question" not in {c["id"] for c in rubric["criteria"]}
        assert "specific_harm" not in {c["id"] for c in rubric["criteria"]}
        assert rubric["writer"]["added"] == [] and "repeat" in rubric["writer"]["rejected"]
    assert main(["verify", str(snap)]) == 0


@pytest.mark.parametrize("writer, role, message", [
    ("nobody", None, "generation.rubric_writer': names role 'nobody', which is not defined"),
    ("writer", {"endpoint": "fake", "model": "writer-model"}, "the rubric writer has no prompt template"),
    ("writer", {"endpoint": "fake", "model": "writer-model", "prompt": "../escape.j2"},
     "roles.writer.prompt"),
])
def test_a_bad_rubric_writer_exits_2_before_any_call(tmp_path, capsys, fake_llm, writer, role, message):
    cfg = fake_config(tmp_path, fake_llm.base_url, generation={"rubric_writer": writer},
                      roles={} if role is None else {"writer": role})
    assert main(["build", "--config", str(cfg), "--name", "never"]) == 2
    assert message in capsys.readouterr().err
    assert fake_llm.requests == []
