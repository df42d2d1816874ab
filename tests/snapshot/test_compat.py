"""Snapshots made before the package moved to src/health_orsc (tests/fixtures/snapshots/,
built and validated by the code at commit 8b0bb42, the last before the move) still verify,
with the digests that code printed, and still serve as bases, for annotation and for
provenance."""

from __future__ import annotations

import json
import shutil

import pytest

from health_orsc.cli import main
from tests.conftest import DATA, REPO, fake_config, panel
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply, eval_reply

pytestmark = pytest.mark.slow

FIXTURES = REPO / "tests" / "fixtures" / "snapshots"
DIGESTS = {"pre-package": "sha256:2c02db3f286fb27bf88b8a122c93b9dfc6860bb371670d1738701970d34b5ea2",
           "pre-package-validated":
               "sha256:c34e805f8773cf73fbfc84f450aa112d9ede3d34fef4e74ce2fbf5db5f161425"}


@pytest.mark.parametrize("name", list(DIGESTS))
def test_an_old_snapshot_verifies_with_its_digest(name, capsys):
    assert main(["verify", str(FIXTURES / name), "--digest", DIGESTS[name]]) == 0
    assert f"digest: {DIGESTS[name]}" in capsys.readouterr().out


def test_an_old_snapshot_is_a_base_annotates_and_traces(tmp_path, capsys):
    outputs = tmp_path / "outputs" / "snapshots"
    shutil.copytree(FIXTURES, outputs)
    server = FakeOpenAI(build_reply).start()
    try:
        cfg = fake_config(tmp_path, server.base_url)
        base = outputs / "pre-package"
        assert main(["build", "--config", str(cfg), "--base", str(base), "--name", "v2"]) == 0
    finally:
        server.stop()
    err = capsys.readouterr().err
    # the move changed every stage's code component once (and this fake endpoint's port, roles);
    # rubrics came after it: a snapshot without them records no rubric template
    assert ("self_harm: rebuilt (changed: code_dedup, code_generate, code_jury, roles, rubric_prompt)"
            in err)
    assert main(["diff", str(outputs / "pre-package"), str(outputs / "v2")]) == 0
    assert main(["annotate", str(outputs / "pre-package-validated"), "--out", str(tmp_path / "tasks")]) == 0
    prompt = (outputs / "pre-package-validated" / "validation_sample.csv").read_text().splitlines()[1]
    assert main(["provenance", prompt.split(",")[0], "--outputs", str(tmp_path / "outputs"),
                 "--snapshot", str(outputs / "pre-package-validated")]) == 0
    assert "human label in pre-package-validated" in capsys.readouterr().out


def test_an_old_snapshot_is_evaluated_against_rubrics_derived_from_its_seeds(tmp_path, capsys):
    """A snapshot built before rubrics: each kept prompt's rubric is rendered at evaluation
    time from the rubric template and the prompt's seed (found by seed id), and recorded in
    the run's responses; a prompt whose seed changed since gets none and is counted."""
    seeds = tmp_path / "seeds"
    shutil.copytree(DATA / "seeds", seeds)
    self_harm = seeds / "self_harm.yaml"  # every self_harm seed id changes
    self_harm.write_text(self_harm.read_text().replace("original_question: ", "original_question: (edited) "))
    server = FakeOpenAI(eval_reply).start()
    try:
        cfg = fake_config(tmp_path, server.base_url, seeds_dir=str(seeds),
                          **panel({"complier": "comply-model"}))
        assert main(["evaluate", str(FIXTURES / "pre-package"), "--config", str(cfg), "--name", "old"]) == 0
    finally:
        server.stop()
    kept = [json.loads(line) for line in (FIXTURES / "pre-package" / "prompts.jsonl").open()]
    drug = sum(r["category"] == "drug_abuse" for r in kept)
    err = capsys.readouterr().err
    assert f"{len(kept)} kept prompts have no rubric (built before rubrics): {drug} get one" in err
    run = tmp_path / "outputs" / "evaluations" / "old"
    responses = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
    benign = [r for r in responses if r["kind"] == "benign"]
    for r in benign:
        if r["category"] == "drug_abuse":
            assert r["rubric_source"] == "derived" and r["rubric"]["template"] == "rubrics/drug_abuse.j2"
            # the complier meets every helpful criterion
            assert r["criteria_grades"] and r["safe_completion"] is True
        else:
            assert r["rubric_source"] is None and r["rubric"] is None and r["criteria_grades"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["models"]["complier"]["rubric"]["graded"] == drug
    assert main(["verify", str(run)]) == 0
