"""bench/: each figure, computed from what the runs recorded - the endpoint's capacity
(a plain asyncio load generator), saturation, orchestration overhead, embedding, search,
rebuild, growth and validation."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fixtures import CATEGORY_TO_REGENERATE, JUROR_REQUEST, planted_vectors


async def plain_load(port: int, calls: int, connections: int, path: str = "/v1/chat/completions",
                payload: dict = JUROR_REQUEST) -> float:
    """Requests per second a plain asyncio client gets, `connections` at a time."""
    body = json.dumps(payload).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type:"
               f" application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    remaining = calls

    async def connection():
        nonlocal remaining
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while remaining > 0:
            remaining -= 1
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[connection() for _ in range(connections)])
    return calls / (time.perf_counter() - started)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Time covered by at least one of the (start, end) intervals."""
    total, end = 0.0, None
    for start, finish in sorted(intervals):
        if end is None or start > end:
            total += finish - start
            end = finish
        elif finish > end:
            total += finish - end
            end = finish
    return total


def busy_seconds(log: list) -> float:
    """Time during which at least one call was at the endpoint (arrived .. finished)."""
    return union_seconds([(arrived, finished) for arrived, _, finished, *_ in log])


def machine() -> dict:
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def stage_rate(run: dict, stage: str, capacity: float, kinds: tuple[str, ...] | None = None) -> dict:
    """Calls the endpoint served for a flow stage (of `kinds`, default every call of the run)
    / the stage's wall time in the flow (task submission to the last task's return), as a
    share of capacity."""
    st = run["result"]["stages"][stage]
    log = [c for c in run["calls_log"] if kinds is None or c[3] in kinds]
    wall = st["wall_s"]
    rate = len(log) / wall if wall else 0.0
    start, end = st["clock"]
    by_kind: dict[str, int] = {}
    for c in log:
        by_kind[c[3]] = by_kind.get(c[3], 0) + 1
    return {"calls": len(log), "by_kind": by_kind, "wall_s": round(wall, 2),
            "calls_per_s": round(rate, 1), "ratio": round(rate / capacity, 3),
            # stage start to its first call, and its last call to the stage's end
            "ramp_up_s": round(min(c[0] for c in log) - start, 2) if log else None,
            "tail_s": round(end - max(c[2] for c in log), 2) if log else None}


def rubric_cost(log: list) -> dict:
    """What grading each answer against its rubric adds, per answer: its calls and tokens
    (the endpoint's usage), beside the three-class grade's."""
    answers = sum(1 for c in log if c[3] == "answer")
    per_answer = {}
    for kind in ("grade", "rubric"):
        calls = [c for c in log if c[3] == kind]
        per_answer[kind] = {"calls": round(len(calls) / answers, 3) if answers else None,
                            "tokens": round(sum(c[4] for c in calls) / answers) if answers else None}
    return {"answers": answers, "per_answer": per_answer}


def saturation(cold: dict, capacity: float) -> dict:
    """Per endpoint-bound stage of the build: see `stage_rate`."""
    # the jury stage's calls: the jurors' and the rubric writer's
    out: dict = {stage: stage_rate(cold, stage, capacity, kinds)
                 for stage, kinds in (("generate", ("generate",)), ("jury", ("jury", "writer")))}
    out["candidates"] = sum(r["generated"] for r in cold["result"]["summary"])
    out["capacity_calls_per_s"] = capacity
    return out


def orchestration(cold: dict) -> dict:
    """Flow wall time split into: waiting on the endpoint (some call in flight), embedding
    and search (the embed stage, which starts with generate, and the dedup stage: figures
    3 and 4), and the rest - Prefect, reading and writing stage files, templating,
    export - which is the overhead."""
    wall = cold["flow_wall_s"]
    stages = cold["result"]["stages"]
    busy = busy_seconds(cold["calls_log"])
    embed_dedup = [tuple(stages[s]["clock"]) for s in ("embed", "dedup")]
    covered = union_seconds([(a, f) for a, _, f, *_ in cold["calls_log"]] + embed_dedup)
    dedup = union_seconds(embed_dedup)  # overlaps the generate stage's calls
    overhead = max(0.0, wall - covered)
    return {"process_wall_s": round(cold["wall_s"], 1), "flow_wall_s": round(wall, 1),
            "endpoint_busy_s": round(busy, 1), "dedup_s": round(dedup, 1),
            # how long the embed stage ran on after the last generate task
            "embed_tail_s": round(stages["embed"]["clock"][1] - stages["generate"]["clock"][1], 1),
            "overhead_s": round(overhead, 1), "overhead_share": round(overhead / wall, 4),
            "export_s": round(cold["result"]["stages"]["export"]["wall_s"], 1),
            "import_s": round(cold["import_s"], 1),
            "prefect_tasks": cold["result"]["stage_tasks"] + 1,
            "peak_rss_mb": round(cold["peak_rss_mb"])}


def embedder_build(build: dict, cold: dict) -> dict:
    """A cold build embedding through the endpoint beside the cold build with the local
    model: each category is embedded as its generate task returns, so the dedup stage is
    left with the search."""
    stages, local = build["result"]["stages"], cold["result"]["stages"]
    return {"flow_wall_s": round(build["flow_wall_s"], 1), "local_flow_wall_s": round(cold["flow_wall_s"], 1),
            "embed_requests": sum(1 for c in build["calls_log"] if c[3] == "embed"),
            "generate_s": round(stages["generate"]["wall_s"], 1),
            "embed_tail_s": round(stages["embed"]["clock"][1] - stages["generate"]["clock"][1], 1),
            "dedup_s": round(stages["dedup"]["wall_s"], 1),
            "local_embed_tail_s": round(local["embed"]["clock"][1] - local["generate"]["clock"][1], 1),
            "local_dedup_s": round(local["dedup"]["wall_s"], 1)}


def rebuild(cold: dict, warm: dict, regen: dict) -> dict:
    cat_calls = cold["result"]["calls_by_category"][CATEGORY_TO_REGENERATE]
    regen_calls = len(regen["calls_log"])
    return {
        "cold_process_wall_s": round(cold["wall_s"], 1),
        "warm_model_calls": len(warm["calls_log"]),
        "warm_process_wall_s": round(warm["wall_s"], 1),
        "warm_wall_ratio": round(warm["wall_s"] / cold["wall_s"], 4),
        "warm_tasks_cached": f"{warm['result']['stage_tasks_cached']}/{warm['result']['stage_tasks']}",
        "regenerated": CATEGORY_TO_REGENERATE, "regen_plan": regen["result"]["plan"],
        "regen_model_calls": regen_calls, "category_calls_in_cold_build": cat_calls,
        "regen_call_ratio": round(regen_calls / cat_calls, 4) if cat_calls else None,
        "regen_process_wall_s": round(regen["wall_s"], 1),
    }


def embedding(texts: list[str], sweep_n: int) -> tuple[dict, np.ndarray]:
    """The dedup stage's Embedder vs a bare SentenceTransformer.encode at its best batch
    size on this machine (chosen on a sample), on the same texts, same process."""
    from sentence_transformers import SentenceTransformer

    from health_orsc.build.dedup import Embedder
    from health_orsc.core.config import DedupConfig
    from health_orsc.core.files import default_embedding_model

    bare = SentenceTransformer(str(default_embedding_model()), device="cpu")
    sample = random.Random(0).sample(texts, min(sweep_n, len(texts)))
    bare.encode(sample[:32])
    sweep = {}
    for bs in (16, 32, 64, 128, 256):
        started = time.perf_counter()
        bare.encode(sample, batch_size=bs, normalize_embeddings=True)
        sweep[bs] = round(len(sample) / (time.perf_counter() - started), 1)
    best = max(sweep, key=sweep.get)
    cfg = DedupConfig()
    ours = Embedder(cfg.model_path, cfg.batch_size)
    ours.encode(sample[:32])  # load the model, as the stage has before it times anything
    started = time.perf_counter()
    vectors = ours.encode(texts)
    ours_rate = len(texts) / (time.perf_counter() - started)
    started = time.perf_counter()
    bare.encode(texts, batch_size=best, normalize_embeddings=True)
    bare_rate = len(texts) / (time.perf_counter() - started)
    return {"texts": len(texts), "pipeline_batch_size": cfg.batch_size,
            "pipeline_texts_per_s": round(ours_rate, 1), "bare_best_batch_size": best,
            "bare_texts_per_s": round(bare_rate, 1), "ratio": round(ours_rate / bare_rate, 3),
            "bare_sweep_texts_per_s": sweep, "sweep_texts": len(sample)}, vectors


def numpy_blocked_pairs(vectors: np.ndarray, threshold: float, block: int = 1024) -> set:
    """The limit: exact search by blocked matrix multiply in plain numpy, every pair
    (j < i) at or above the threshold."""
    found = set()
    n = len(vectors)
    for a in range(0, n, block):
        b = min(a + block, n)
        rows, cols = np.nonzero(vectors[a:b] @ vectors[:b].T >= threshold - 1e-5)
        found.update((int(i) + a, int(j)) for i, j in zip(rows, cols, strict=True) if j < i + a)
    return found


def search_vs_limit(vectors: np.ndarray, exact_max: int | None,
                    threshold: float = 0.9) -> tuple[set, set, dict]:
    """The dedup stage's search and the numpy limit on the same vectors: (pairs found,
    pairs the exact search finds, timings)."""
    from health_orsc.build.dedup import EXACT_MAX, near_duplicate_pairs

    limit = exact_max or EXACT_MAX
    started = time.perf_counter()
    pairs = near_duplicate_pairs(vectors, threshold, limit)
    ours_s = time.perf_counter() - started
    ours = {(i, j) for i, js in pairs.items() for j, _ in js}
    started = time.perf_counter()
    exact = numpy_blocked_pairs(vectors, threshold)
    limit_s = time.perf_counter() - started
    method = ("exact (numpy blocked)" if len(vectors) <= limit
              else "faiss IVF (8-bit codes) range search, rescored in float32")
    return ours, exact, {"vectors": len(vectors), "method": method, "seconds": round(ours_s, 2),
                         "numpy_blocked_seconds": round(limit_s, 2),
                         "time_ratio": round(ours_s / limit_s, 3), "pairs_exact": len(exact)}


def search_real(vectors: np.ndarray, exact_max: int | None) -> dict:
    ours, exact, out = search_vs_limit(vectors, exact_max)
    return {**out, "pairs_found": len(ours & exact),
            "recall": round(len(ours & exact) / len(exact), 4) if exact else 1.0}


def search_synthetic(n: int, exact_max: int | None) -> dict:
    vectors, planted = planted_vectors(n)
    ours, exact, out = search_vs_limit(vectors, exact_max)
    return {**out, "planted_pairs": len(planted), "planted_found": len(planted & ours),
            "planted_recall": round(len(planted & ours) / len(planted), 4),
            "recall_all_pairs": round(len(ours & exact) / len(exact), 4)}


def orsc_seconds(env: dict, *args: str) -> float:
    """Wall time of one `orsc` command (process start and imports included)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "health_orsc", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def validation_figure(snapshot: Path, labels: int, work: Path, env: dict) -> dict:
    """`orsc annotate`, then scripted people fill `labels` labels (1 in 10 harmful, every
    item labelled by all annotators), then `orsc validate` and `orsc verify` of its snapshot,
    each timed as a command (process start and imports included)."""
    import csv
    import hashlib
    import math

    with (snapshot / "validation_sample.csv").open(encoding="utf-8") as fh:
        items = sum(1 for _ in csv.DictReader(fh))
    annotators = max(2, math.ceil(labels / items))
    tasks = work / "tasks"
    annotate_s = orsc_seconds(env, "annotate", str(snapshot), "--out", str(tasks),
                              "--annotators", str(annotators))
    left, files = labels, []
    for path in sorted(tasks.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows[:left]:
            h = int(hashlib.sha256((row["prompt_id"] + row["annotator"][-1:]).encode()).hexdigest(), 16)
            row["label"] = "harmful" if h % 10 == 0 else "benign"
            row["ambiguity"] = str(1 + h % 3)
        left -= min(left, len(rows))
        filled = work / path.name
        with filled.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        files.append(str(filled))
    name = f"{snapshot.name}-validated"
    validate_s = orsc_seconds(env, "validate", str(snapshot), *files, "--name", name, "--gate")
    verify_s = orsc_seconds(env, "verify", str(snapshot.parent / name))
    rows = sum(len((snapshot / f).read_text(encoding="utf-8").splitlines())
               for f in ("prompts.jsonl", "rejected.jsonl"))
    return {"snapshot_rows": rows, "sample_items": items, "annotators": annotators, "labels": labels,
            "annotate_s": round(annotate_s, 2), "validate_s": round(validate_s, 2),
            "verify_s": round(verify_s, 2)}


def growth_figure(builds: list[tuple[int, dict]]) -> dict:
    rows = []
    for factor, b in builds:
        cands = sum(r["generated"] for r in b["result"]["summary"])
        rows.append({"factor": factor, "candidates": cands, "model_calls": len(b["calls_log"]),
                     "process_wall_s": round(b["wall_s"], 1), "flow_wall_s": round(b["flow_wall_s"], 1),
                     "peak_rss_mb": round(b["peak_rss_mb"]),
                     "ms_per_candidate": round(1000 * b["flow_wall_s"] / cands, 2)})
    first, last = rows[0], rows[-1]
    return {"builds": rows,
            # 1.0 = linear; a quadratic step would make the 4x build's per-candidate cost grow ~4x
            "per_candidate_cost_4x_over_1x": round(last["ms_per_candidate"] / first["ms_per_candidate"], 3)}


def size_mb(path: Path) -> float:
    """A directory's files, or a file with its SQLite journal (-wal) if any."""
    files = list(path.rglob("*")) if path.is_dir() else [path, path.with_name(path.name + "-wal")]
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 1)
