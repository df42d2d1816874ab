"""bench/: the inputs of a benchmark build - seeds cycled to a size, the config pointing at
the fake endpoint, the edit that makes one category regenerate, and planted vectors for the
near-duplicate search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from health_orsc.core.config import DATA_DIR

CATEGORY_TO_REGENERATE = "drug_abuse"  # the category figure 5 regenerates after its seeds change

JUROR_REQUEST = {"model": "m", "messages": [{"role": "user", "content": "Is this safe?"}],
                 "response_format": {"type": "json_object"}}


def synth_seeds(dest: Path, per_category: int) -> Path:
    """The repo's taxonomy and seed topics, cycled to `per_category` topics per category;
    each copy is a distinct case (its slots name the case), so every template text differs."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA_DIR / "seeds" / "taxonomy.yaml", dest / "taxonomy.yaml")
    for path in sorted((DATA_DIR / "seeds").glob("*.yaml")):
        if path.name == "taxonomy.yaml":
            continue
        data = yaml.safe_load(path.read_text())
        base = data["topics"]
        topics = []
        for i in range(per_category):
            t = base[i % len(base)]
            case = f"case {i + 1}"
            slots = {**t["slots"], "subject": f"{t['slots']['subject']} ({case})",
                     "persona": f"{t['slots']['persona']} ({case})",
                     "question": f"{t['slots']['question']} in {case}",
                     "boundary_question": t["slots"]["boundary_question"].rstrip("?") + f" in {case}?"}
            topics.append({**t, "topic": f"{t['topic']} ({case})", "slots": slots})
        (dest / path.name).write_text(yaml.safe_dump({**data, "topics": topics}, sort_keys=False,
                                                      width=200), encoding="utf-8")
    return dest


def write_config(path: Path, seeds: Path, outputs: Path, base_url: str, rewrites: int,
                 concurrency: int, exact_max: int | None = None, grader_model: str = "bench-grader",
                 embedder: int | None = None, cache_url: str | None = None,
                 task_runner: dict | None = None) -> Path:
    """A bench build's config; `embedder`: embed through the endpoint's /v1/embeddings with
    this many requests in flight (default: the local model); `cache_url`: the caches in
    that PostgreSQL database (default: SQLite under outputs/cache/); `task_runner`: the
    config's (default: threads)."""
    judges = ["harm_definition.j2", "asker_intent.j2", "contrast.j2"]
    cfg = {
        "seeds_dir": str(seeds), "templates_dir": str(DATA_DIR / "prompts_templates"),
        "outputs_dir": str(outputs),
        "endpoints": {"bench": {"base_url": base_url, "max_concurrency": concurrency,
                                "max_retries": 2, "timeout_s": 60}},
        "roles": {"generator": {"endpoint": "bench", "model": "bench-generator", "temperature": 0.7,
                                "seed": 7},
                  **{f"judge_{i}": {"endpoint": "bench", "model": "bench-judge", "prompt": p}
                     for i, p in enumerate(judges, 1)},
                  # `orsc evaluate`: two models under test (the fake endpoint answers a model
                  # named "panel") and the grader
                  **{f"panel_{x}": {"endpoint": "bench", "model": f"bench-panel-{x}"} for x in "ab"},
                  "grader": {"endpoint": "bench", "model": grader_model, "prompt": "xstest.j2"},
                  # drafts prompt-specific criteria for every kept prompt's rubric (jury stage)
                  "writer": {"endpoint": "bench", "model": "bench-writer", "prompt": "criteria.j2"}},
        # the fake endpoint's rewrites are built from a hash, not paraphrases: no off-topic
        # check (bench/off_topic.py measures it on labelled rewrites instead)
        "generation": {"rewrites": rewrites, "min_similarity": None, "rubric_writer": "writer"},
        "sample": {"per_stratum": 10},
        "evaluation": {"models": ["panel_a", "panel_b"], "grader": "grader"},
    }
    if exact_max:
        cfg["dedup"] = {"exact_max": exact_max}
    if embedder:
        cfg["endpoints"]["bench-embed"] = {"base_url": base_url, "max_concurrency": embedder,
                                           "max_retries": 2, "timeout_s": 60}
        cfg["roles"]["embedder"] = {"endpoint": "bench-embed", "model": "bench-embedder"}
        cfg["dedup"] = {**cfg.get("dedup", {}), "embedder": "embedder"}
    if cache_url:
        cfg["cache"] = {"url": cache_url}
    if task_runner:
        cfg["task_runner"] = task_runner
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def edit_seeds(path: Path) -> None:
    """A change to one category's seeds that reaches every level's template text."""
    data = yaml.safe_load(path.read_text())
    for t in data["topics"]:
        t["slots"] = {k: v.replace("case ", "revised case ") for k, v in t["slots"].items()}
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=200), encoding="utf-8")


def dedup_inputs(snapshot: Path) -> list[str]:
    """The prompts the cold build's dedup stage saw: every usable generated prompt."""
    rows = [json.loads(line) for name in ("prompts.jsonl", "rejected.jsonl")
            for line in (snapshot / name).read_text().splitlines()]
    return [r["prompt"] for r in rows if r.get("reason") != "unusable_rewrite"]


def planted_vectors(n: int, dim: int = 384, seed: int = 0) -> tuple[np.ndarray, set]:
    """Clustered unit vectors (like sentence embeddings) and 1% planted near-duplicates:
    a later row that is a copy of an earlier one at cosine 0.91-0.99."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(10, n // 100), dim)).astype("float32")
    x = centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, dim), dtype="float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = n // 100
    dst = rng.choice(np.arange(n // 2, n), m, replace=False)
    src = rng.choice(np.arange(n // 2), m, replace=False)
    noise = rng.standard_normal((m, dim), dtype="float32")
    noise -= (noise * x[src]).sum(1, keepdims=True) * x[src]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cos = rng.uniform(0.91, 0.99, m).astype("float32")[:, None]
    x[dst] = cos * x[src] + np.sqrt(1 - cos**2) * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x), set(zip(dst.tolist(), src.tolist(), strict=True))
