"""bench/run.py at its tiny size: it runs end to end and reports every figure.

The paper-scale figures live in bench/README.md; this only proves the harness
works from a clean checkout (real fake endpoint, real Prefect server, real builds).
"""

from __future__ import annotations

import json
import numbers
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

FIGURES = {
    "endpoint": ["measured_calls_per_s", "nominal_calls_per_s"],
    "gateway": ["cpu_ms_per_call", "calls_per_s", "client"],
    "endpoint_saturation": ["generate", "jury", "candidates"],
    "orchestration": ["flow_wall_s", "endpoint_busy_s", "dedup_s", "overhead_share",
                      "prefect_tasks", "peak_rss_mb"],
    "embedding": ["pipeline_texts_per_s", "bare_texts_per_s", "ratio", "bare_best_batch_size"],
    "search": ["real", "synthetic"],
    "rebuild": ["warm_model_calls", "warm_wall_ratio", "regen_model_calls", "regen_call_ratio"],
    "growth": ["builds", "per_candidate_cost_4x_over_1x"],
    "validation": ["labels", "validate_s", "verify_s", "annotate_s"],
    "evaluation": ["prompts", "first", "regrade", "write_s", "peak_rss_mb"],
    "embedding_endpoint": ["texts_per_s", "capacity_texts_per_s", "ratio", "requests"],
    "embedder_build": ["flow_wall_s", "dedup_s", "embed_requests", "embed_tail_s"],
    "cache_backends": ["postgres_bursts", "builds"],
}


def test_bench_tiny_reports_every_figure(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--size", "tiny",
                           "--workdir", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for figure, keys in FIGURES.items():
        for key in keys:
            assert key in results[figure], f"{figure}.{key}"
    for stage in ("generate", "jury"):
        sat = results["endpoint_saturation"][stage]
        assert sat["calls"] > 0 and 0 < sat["ratio"] <= 1.2
    assert results["endpoint"]["measured_calls_per_s"] > 0
    emb = results["embedding_endpoint"]
    assert emb["requests"] >= emb["texts"] / emb["batch_size"] and 0 < emb["ratio"] <= 1.2
    assert results["embedder_build"]["embed_requests"] > 0
    ev = results["evaluation"]
    # two models answer every prompt (and the contrast set); the grader grades every distinct
    # (question, answer): the fake endpoint's canned refusal to one question is graded once
    first = ev["first"]["by_kind"]
    assert ev["prompts"] > 0 and first["answer"] > 2 * ev["prompts"] and 0 < first["grade"] <= first["answer"]
    # the answers came from the cache; the new grader grades every answer, and the benign ones
    # against their rubrics
    assert ev["regrade"]["by_kind"] == {"grade": first["grade"], "rubric": first["rubric"]}
    assert 0 < first["rubric"] < first["grade"]
    assert 0 < ev["first"]["ratio"] <= 1.2 and 0 < ev["regrade"]["ratio"] <= 1.2
    assert results["rebuild"]["warm_model_calls"] == 0  # a warm rebuild makes no model calls
    assert 0 < results["rebuild"]["regen_call_ratio"] <= 1.05
    search = results["search"]
    assert search["real"]["recall"] == 1.0  # the exact path finds every pair
    assert search["synthetic"]["method"].startswith("faiss IVF")
    assert search["synthetic"]["planted_recall"] >= 0.95
    assert [b["factor"] for b in results["growth"]["builds"]] == [1, 2, 4]
    assert all(isinstance(b["peak_rss_mb"], numbers.Number) for b in results["growth"]["builds"])
    cache = results["cache_backends"]
    for bursts in (results["gateway"]["sqlite_bursts"], cache["postgres_bursts"]):
        # the second burst repeats the first one's calls: every one a hit, none sent again
        assert bursts["endpoint_calls"] == bursts["calls"] and bursts["hit"]["calls_per_s"] > 0
    on_pg, on_sqlite = cache["builds"]["postgres"], cache["builds"]["sqlite"]
    assert on_pg["candidates"] == on_sqlite["candidates"] > 0
    assert on_pg["jury"]["calls"] == on_sqlite["jury"]["calls"] > 0
    # the markdown table is printed, one row per figure
    assert 0 < results["gateway"]["cpu_ms_per_call"] < 50
    for label in ("endpoint capacity", "gateway CPU per call", "generate:", "jury:", "Prefect + bookkeeping",
                  "embedding", "search", "warm rebuild", "regenerate", "growth 4x", "orsc validate",
                  "models (answers + grades)", "grader stage alone", "through /v1/embeddings",
                  "cold build embedding through the endpoint", "cache hit", "cache miss",
                  "cold build, cache in PostgreSQL: jury"):
        assert label in proc.stdout, label
