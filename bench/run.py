"""health-orsc benchmarks: each figure side by side with its limit.

    python bench/run.py                  # paper scale (31,920 candidates), ~55 min on 2 cores
    python bench/run.py --size tiny      # seconds-scale smoke run (tests/package/test_bench.py)
    python bench/run.py scale            # per-candidate costs at 4 sizes, for estimates beyond
    python bench/run.py evaluation       # figure 8 alone: a cold build, evaluate, re-grade (~16 min)
    python bench/run.py callers          # figure 10: calls from one process and from two (Dask)

Writes bench/results.json (or --out) and prints a markdown table. Everything runs
in this process tree, offline: a fake OpenAI-compatible endpoint with a fixed
capacity (bench/fake_endpoint.py), a Prefect server on loopback, and the builds
as child processes (`python bench/run.py build-once ...`), so each build's wall
time and peak RSS are its own.

Figures (see bench/README.md for what each measures and the numbers we got):
1 endpoint saturation  2 orchestration overhead  3 embedding  4 near-duplicate search
5 warm rebuild and one-category regeneration  6 growth  7 validation
8 evaluating two models on the cold snapshot (answers, grades; a re-grade alone)
9 the request cache in PostgreSQL against SQLite (hit and miss cost, a cold build's saturation)
10 (`callers`) the build, evaluation and re-grade on one process and on a 2-worker Dask cluster
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from figures import (
    busy_seconds,
    embedder_build,
    embedding,
    growth_figure,
    machine,
    orchestration,
    orsc_seconds,
    plain_load,
    rebuild,
    rubric_cost,
    saturation,
    search_real,
    search_synthetic,
    size_mb,
    stage_rate,
    validation_figure,
)
from fixtures import CATEGORY_TO_REGENERATE, dedup_inputs, edit_seeds, synth_seeds, write_config
from processes import Child, build_once, evaluate_once, get_json
from report import table

from health_orsc.core.config import DATA_DIR
from health_orsc.llm.embedded import free_port

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(1, str(REPO))  # tests/fakes/postgres.py: the PostgreSQL server of figure 9

SIZES = {
    # 7 categories x 380 seeds x 3 levels x 4 rewrites = 31,920 candidates (the paper's count)
    "paper": {"seeds": 380, "rewrites": 4, "growth_seeds": 40, "capacity_calls": 12_800,
              "sweep_texts": 4_000, "synthetic_vectors": 200_000, "exact_max": None, "labels": 2_000},
    # a quicker look while tuning: 3,360 candidates
    "mid": {"seeds": 40, "rewrites": 4, "growth_seeds": 10, "capacity_calls": 6_400,
            "sweep_texts": 1_000, "synthetic_vectors": 60_000, "exact_max": None, "labels": 1_000},
    # smoke: every figure, tiny numbers; exact_max forces the ANN path on 4,000 vectors
    "tiny": {"seeds": 2, "rewrites": 1, "growth_seeds": 1, "capacity_calls": 640,
             "sweep_texts": 64, "synthetic_vectors": 4_000, "exact_max": 1_000, "labels": 40},
}


# -- figure 1: the endpoint's capacity, measured with a plain async load generator ---------


# -- one build in a child process ----------------------------------------------------------


class Bench:
    def __init__(self, size: str, workdir: Path, service_ms: float, slots: int,
                 embed_ms_per_text: float = 2.0, embed_slots: int = 8):
        self.size = SIZES[size]
        self.size_name = size
        self.work = workdir
        self.service_ms, self.slots = service_ms, slots
        self.embed_ms_per_text, self.embed_slots = embed_ms_per_text, embed_slots
        self.env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect-home"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
                    "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
        self.children: list[Child] = []

    # servers
    def start(self) -> None:
        port = free_port()
        fake = Child([sys.executable, str(BENCH / "fake_endpoint.py"), "--port", str(port),
                      "--service-ms", str(self.service_ms), "--slots", str(self.slots),
                      "--embed-ms-per-text", str(self.embed_ms_per_text),
                      "--embed-slots", str(self.embed_slots)],
                     self.env, self.work / "fake_endpoint.log")
        self.children.append(fake)
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        fake.wait_for(lambda: get_json(f"{self.base_url}/log"), 30, "the fake endpoint")
        api_port = free_port()
        self.env["PREFECT_API_URL"] = f"http://127.0.0.1:{api_port}/api"
        started = time.perf_counter()
        server = Child([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                        "--port", str(api_port)], self.env, self.work / "prefect-server.log")
        self.children.append(server)
        server.wait_for(lambda: get_json(f"http://127.0.0.1:{api_port}/api/health") is not None,
                        300, "the Prefect server")
        self.prefect_server_start_s = time.perf_counter() - started

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def calls_log(self) -> list:
        return get_json(f"{self.base_url}/log?reset=1")["calls"]

    def build(self, config: Path, name: str, base: Path | None = None,
              category: str | None = None) -> dict:
        extra = (["--base", str(base)] if base else []) + (["--categories", category] if category else [])
        return self.child("build-once", config, name, extra)

    def evaluate(self, config: Path, snapshot: Path, name: str) -> dict:
        return self.child("evaluate-once", config, name, ["--snapshot", str(snapshot)])

    def child(self, mode: str, config: Path, name: str, extra: list[str]) -> dict:
        """Run one flow (`mode`) in a child process; its result, wall time and the endpoint's
        log of the calls it made."""
        self.calls_log()  # start from an empty log
        out = self.work / f"result-{name}.json"
        cmd = [sys.executable, str(BENCH / "run.py"), mode, "--config", str(config),
               "--name", name, "--result", str(out), *extra]
        started = time.perf_counter()
        log = self.work / f"{mode}-{name}.log"
        with log.open("wb") as f:
            rc = subprocess.run(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - started
        if rc != 0:
            raise RuntimeError(f"{mode} {name} failed (exit {rc}); log: {log}\n{log.read_text()[-3000:]}")
        data = json.loads(out.read_text())
        data["wall_s"] = wall
        data["calls_log"] = self.calls_log()
        # kept beside the run for a closer look: (arrived, served, finished, kind) per call
        (self.work / f"calls-{name}.json").write_text(json.dumps(data["calls_log"]))
        return data

    # figures
    def capacity(self) -> dict:
        self.calls_log()
        cpu = time.process_time()
        rate = asyncio.run(plain_load(self.port, self.size["capacity_calls"], 2 * self.slots))
        cpu = time.process_time() - cpu
        self.calls_log()
        return {"nominal_calls_per_s": self.slots / (self.service_ms / 1000),
                "measured_calls_per_s": round(rate, 1), "calls": self.size["capacity_calls"],
                "connections": 2 * self.slots,
                # the plain load generator's own CPU per call, beside the gateway's (figure 1)
                "load_generator_cpu_ms_per_call": round(1000 * cpu / self.size["capacity_calls"], 3)}

    def embedding_endpoint(self, texts: list[str], seeds: Path) -> dict:
        """The dedup stage's Embedder with an embedder role (requests of `dedup.batch_size`
        texts, into a fresh embedding cache) against the fake endpoint's /v1/embeddings,
        beside that endpoint's capacity measured with the plain load generator."""
        from health_orsc.build.dedup import Embedder
        from health_orsc.cache.embeddings import EmbeddingCache
        from health_orsc.core.config import load_config
        from health_orsc.llm import Gateway

        batch = 32
        payload = {"model": "m", "input": [f"Is dose {i} of this medicine safe?" for i in range(batch)]}
        self.calls_log()
        requests = max(20, self.size["capacity_calls"] // batch)
        rate = batch * asyncio.run(plain_load(self.port, requests, 2 * self.embed_slots, "/v1/embeddings",
                                         payload))
        self.calls_log()
        work = self.work / "embedder"
        cfg = load_config(write_config(work / "config.yaml", seeds, work / "outputs", self.base_url, 1,
                                       2 * self.slots, embedder=2 * self.embed_slots))
        gw = Gateway(cfg)
        cache = EmbeddingCache(work / "outputs" / "cache" / "embeddings.sqlite")
        try:
            started = time.perf_counter()
            Embedder.for_config(cfg, cache, gateway=gw).encode(texts)
            wall = time.perf_counter() - started
        finally:
            cache.close()
            gw.close()
        requests_made = sum(1 for c in self.calls_log() if c[3] == "embed")
        return {"texts": len(texts), "batch_size": cfg.dedup.batch_size, "requests": requests_made,
                "capacity_texts_per_s": round(rate, 1),
                "nominal_texts_per_s": round(self.embed_slots / (self.embed_ms_per_text / 1000), 1),
                "texts_per_s": round(len(texts) / wall, 1), "ratio": round(len(texts) / wall / rate, 3)}

    def juror_bursts(self, config: Path) -> dict:
        """Distinct juror calls at full concurrency against the fake endpoint through a
        Gateway, each burst timed on this process's CPU clock and the wall clock: first
        every call a cache miss (request and cache key, the openai client over aiohttp,
        validating the reply, the cache write), then the same calls again, every one a hit."""
        from health_orsc.build.jury import VERDICT_SCHEMA
        from health_orsc.core.config import load_config
        from health_orsc.llm import Gateway

        calls = self.size["capacity_calls"]
        gw = Gateway(load_config(config))

        async def burst(start: int, n: int):
            return await asyncio.gather(*[
                gw.chat("judge_1", [{"role": "user", "content": f"Is question {i} safe?"}], VERDICT_SCHEMA)
                for i in range(start, start + n)])

        out = {"calls": calls}
        try:
            gw.run(burst(calls, 2 * self.slots))  # connections and the loop warmed up
            self.calls_log()
            for what in ("miss", "hit"):
                cpu, wall = time.process_time(), time.perf_counter()
                gw.run(burst(0, calls))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                out[what] = {"cpu_us_per_call": round(1e6 * cpu / calls, 1),
                             "wall_us_per_call": round(1e6 * wall / calls, 1),
                             "calls_per_s": round(calls / wall, 1)}
        finally:
            gw.close()
            out["endpoint_calls"] = len(self.calls_log())
        return out

    def gateway_cpu(self) -> dict:
        """CPU per model call in the gateway: `juror_bursts`' misses, SQLite cache."""
        work = self.work / "gateway"
        bursts = self.juror_bursts(write_config(work / "config.yaml", DATA_DIR / "seeds", work / "outputs",
                                                self.base_url, 1, 2 * self.slots))
        return {"calls": bursts["calls"],
                "client": "openai.AsyncOpenAI's headers over an aiohttp session (llm/retry.py, Poster)",
                "cpu_ms_per_call": round(bursts["miss"]["cpu_us_per_call"] / 1000, 3),
                "calls_per_s": bursts["miss"]["calls_per_s"], "sqlite_bursts": bursts}

    def cache_backends(self, seeds: Path, sqlite_build: dict, capacity: float) -> dict:
        """The request cache in PostgreSQL against SQLite: `juror_bursts` with the cache in
        a PostgreSQL server on this host (tests/fakes/postgres.py), and a cold build with it,
        embedding through the endpoint, beside the same build on SQLite (`sqlite_build`)."""
        try:
            from tests.fakes.postgres import PostgresServer, new_database

            server = PostgresServer()
        except RuntimeError as err:
            return {"skipped": str(err)}
        s = self.size
        try:
            work = self.work / "gateway-pg"
            bursts = self.juror_bursts(write_config(work / "config.yaml", DATA_DIR / "seeds",
                                                    work / "outputs", self.base_url, 1, 2 * self.slots,
                                                    cache_url=new_database(server)))
            config = write_config(self.work / "paper-pg" / "config.yaml", seeds,
                                  self.work / "paper-pg" / "outputs", self.base_url, s["rewrites"],
                                  2 * self.slots, s["exact_max"], embedder=2 * self.embed_slots,
                                  cache_url=new_database(server))
            build = self.build(config, "cold-postgres")
        finally:
            server.remove()
        return {"postgres_bursts": bursts,
                "builds": {name: {**saturation(b, capacity), "flow_wall_s": round(b["flow_wall_s"], 1),
                                  "peak_rss_mb": round(b["peak_rss_mb"])}
                           for name, b in (("sqlite", sqlite_build), ("postgres", build))}}

    def evaluation_figure(self, config: Path, snapshot: Path, seeds: Path, capacity: float) -> dict:
        """`orsc evaluate`'s flow on the cold snapshot with two models: the panel's answers and
        their grades share the tasks, so the figure is every call over the evaluate stage's
        wall. Then the grader stage alone: a second grader re-grades every answer, which comes
        from the request cache."""
        first = self.evaluate(config, snapshot, "eval")
        s = self.size
        regrade_cfg = write_config(config.parent / "config-regrade.yaml", seeds, config.parent / "outputs",
                                   self.base_url, s["rewrites"], 2 * self.slots, s["exact_max"],
                                   grader_model="bench-grader-2")
        regrade = self.evaluate(regrade_cfg, snapshot, "eval-regrade")
        with (Path(first["result"]["run"]) / "difficulty.csv").open(encoding="utf-8") as fh:
            prompts = sum(1 for _ in fh) - 1  # one row per benign prompt
        return {"prompts": prompts, "models": 2, "first": stage_rate(first, "evaluate", capacity),
                "rubric_cost": rubric_cost(first["calls_log"]),
                "regrade": stage_rate(regrade, "evaluate", capacity),
                "write_s": round(first["result"]["stages"]["write"]["wall_s"], 1),
                "process_wall_s": round(first["wall_s"], 1), "tasks": first["result"]["tasks"],
                "peak_rss_mb": round(first["peak_rss_mb"])}

    def run(self) -> dict:
        s = self.size
        results: dict = {"size": self.size_name, "machine": machine(),
                         "date": datetime.now(UTC).isoformat(timespec="seconds")}
        self.start()
        results["prefect_server_start_s"] = round(self.prefect_server_start_s, 1)
        cap = self.capacity()
        results["endpoint"] = {"service_ms": self.service_ms, "slots": self.slots, **cap}
        capacity = cap["measured_calls_per_s"]
        results["gateway"] = self.gateway_cpu()

        seeds = synth_seeds(self.work / "seeds-paper", s["seeds"])
        config = write_config(self.work / "paper" / "config.yaml", seeds, self.work / "paper" / "outputs",
                              self.base_url, s["rewrites"], 2 * self.slots, s["exact_max"])
        cold = self.build(config, "cold")
        results["endpoint_saturation"] = saturation(cold, capacity)
        results["orchestration"] = orchestration(cold)

        cold_snapshot = self.work / "paper" / "outputs" / "snapshots" / "cold"
        results["evaluation"] = self.evaluation_figure(config, cold_snapshot, seeds, capacity)

        warm = self.build(config, "warm")
        edit_seeds(seeds / f"{CATEGORY_TO_REGENERATE}.yaml")
        regen = self.build(config, "regen", base=self.work / "paper" / "outputs" / "snapshots" / "cold")
        results["rebuild"] = rebuild(cold, warm, regen)

        results["validation"] = validation_figure(self.work / "paper" / "outputs" / "snapshots" / "cold",
                                                  s["labels"], self.work / "annotation", self.env)
        texts = dedup_inputs(self.work / "paper" / "outputs" / "snapshots" / "cold")
        results["embedding"], vectors = embedding(texts, s["sweep_texts"])
        results["embedding_endpoint"] = self.embedding_endpoint(texts, seeds)
        # a cold build with that endpoint as its embedder, from an empty outputs dir
        ecfg = write_config(self.work / "paper-embedder" / "config.yaml", seeds,
                            self.work / "paper-embedder" / "outputs", self.base_url, s["rewrites"],
                            2 * self.slots, s["exact_max"], embedder=2 * self.embed_slots)
        sqlite_build = self.build(ecfg, "cold-embedder")
        results["embedder_build"] = embedder_build(sqlite_build, cold)
        results["cache_backends"] = self.cache_backends(seeds, sqlite_build, capacity)
        results["search"] = {"real": search_real(vectors, s["exact_max"]),
                             "synthetic": search_synthetic(s["synthetic_vectors"], s["exact_max"])}

        growth = []
        for factor in (1, 2, 4):
            gseeds = synth_seeds(self.work / f"seeds-growth-{factor}", s["growth_seeds"] * factor)
            gcfg = write_config(self.work / f"growth-{factor}" / "config.yaml", gseeds,
                                self.work / f"growth-{factor}" / "outputs", self.base_url,
                                s["rewrites"], 2 * self.slots, s["exact_max"])
            growth.append((factor, self.build(gcfg, f"growth-{factor}")))
        results["growth"] = growth_figure(growth)
        return results


@contextlib.contextmanager
def bench_in(args: argparse.Namespace, size: str):
    """A Bench in --workdir (kept) or a temp dir (removed), its servers stopped at the end."""
    work = args.workdir or Path(tempfile.mkdtemp(prefix="orsc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(size, work.resolve(), args.service_ms, args.slots)
    try:
        yield bench
    finally:
        bench.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def scale_probe(bench: Bench, seeds_per_category: list[int]) -> dict:
    """Per-candidate costs for extrapolating beyond paper scale: cold builds at growing
    sizes, embedding through the fake endpoint (so the local model's fixed ~0.7 GB does
    not blur the slope). Per build: calls, wall, peak RSS per stage, and the bytes of the
    request cache, the embedding cache, the stage files and the snapshot; then each
    one's growth per 1,000 candidates (least squares over the builds)."""
    rows = []
    bench.start()
    capacity = bench.capacity()
    for n in seeds_per_category:
        seeds = synth_seeds(bench.work / f"seeds-{n}", n)
        out = bench.work / f"probe-{n}" / "outputs"
        cfg = write_config(out.parent / "config.yaml", seeds, out, bench.base_url, 4, 2 * bench.slots,
                           embedder=2 * bench.embed_slots)
        b = bench.build(cfg, f"probe-{n}")
        snapshot = out / "snapshots" / f"probe-{n}"
        rows.append({"seeds_per_category": n,
                     "candidates": sum(r["generated"] for r in b["result"]["summary"]),
                     "model_calls": sum(1 for c in b["calls_log"] if c[3] != "embed"),
                     "flow_wall_s": round(b["flow_wall_s"], 1), "peak_rss_mb": round(b["peak_rss_mb"]),
                     "rss_mb_by_stage": b["rss_mb_by_stage"],
                     **{k: b[k] for k in ("file_rss_mb_by_stage", "heap_mb_by_stage", "heap_highs")
                        if k in b},
                     "request_cache_mb": size_mb(out / "cache" / "llm.sqlite"),
                     "embedding_cache_mb": size_mb(out / "cache" / "embeddings.sqlite"),
                     "stage_files_mb": size_mb(out / "stages"),
                     "snapshot_mb": size_mb(snapshot),
                     "saturation": scale_saturation(b, capacity["measured_calls_per_s"]),
                     "verify_s": round(orsc_seconds(bench.env, "verify", str(snapshot)), 1)})
    head = {"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "endpoint": {"service_ms": bench.service_ms, "slots": bench.slots, **capacity}, "builds": rows}
    if len(rows) < 2:  # one build: no slope to take
        return head
    x = np.array([r["candidates"] for r in rows], dtype=float) / 1000

    def per_1k(values: list[float]) -> float:
        return round(float(np.polyfit(x, np.array(values, dtype=float), 1)[0]), 2)

    stages = rows[-1]["rss_mb_by_stage"]
    return {**head, "per_1k_candidates": {
        "model_calls": per_1k([r["model_calls"] for r in rows]),
        "flow_wall_s": per_1k([r["flow_wall_s"] for r in rows]),
        "peak_rss_mb": per_1k([r["peak_rss_mb"] for r in rows]),
        "rss_mb_by_stage": {st: per_1k([r["rss_mb_by_stage"][st] for r in rows]) for st in stages},
        **{k: per_1k([r[k] for r in rows])
           for k in ("request_cache_mb", "embedding_cache_mb", "stage_files_mb", "snapshot_mb")}}}


def scale_saturation(build: dict, capacity: float) -> dict:
    """A probe build's calls/s per endpoint-bound stage against the endpoint's measured
    capacity (figure 1's measure), and its flow wall time over the time some call was at
    the endpoint (figure 2's), with how long embedding ran on after generate."""
    figure = saturation(build, capacity)
    busy = busy_seconds(build["calls_log"])
    stages = build["result"]["stages"]
    return {**{stage: {k: figure[stage][k] for k in ("calls", "wall_s", "calls_per_s", "ratio")}
               for stage in ("generate", "jury")},
            "endpoint_busy_s": round(busy, 1), "wall_over_busy": round(build["flow_wall_s"] / busy, 3),
            "embed_tail_s": round(stages["embed"]["clock"][1] - stages["generate"]["clock"][1], 1),
            "export_s": round(stages["export"]["wall_s"], 1)}


def callers(bench: Bench) -> dict:
    """Figure 10: model calls from one process and from two. The same cold build (embedding
    through the endpoint) and the evaluation and re-grade of its snapshot, once on the thread
    runner (one process makes every call) and once on a two-worker Dask LocalCluster
    (`task_runner: {name: dask, n_workers: 2}`: each worker process its own gateway), each
    from an empty outputs directory: per stage the calls/s against the endpoint's measured
    capacity, the build's wall over endpoint-busy time, and whether the two snapshots' row
    files and the two leaderboards are the same."""
    s = bench.size
    bench.start()
    capacity = bench.capacity()
    out: dict = {"size": bench.size_name, "machine": machine(),
                 "date": datetime.now(UTC).isoformat(timespec="seconds"),
                 "endpoint": {"service_ms": bench.service_ms, "slots": bench.slots, **capacity},
                 "gateway": bench.gateway_cpu()}
    rate = capacity["measured_calls_per_s"]
    seeds = synth_seeds(bench.work / "seeds", s["seeds"])
    files, boards = {}, {}
    for runner, task_runner in (("threads", None), ("dask", {"name": "dask", "n_workers": 2})):
        root = bench.work / runner
        common = (seeds, root / "outputs", bench.base_url, s["rewrites"], 2 * bench.slots, s["exact_max"])
        cfg = write_config(root / "config.yaml", *common, embedder=2 * bench.embed_slots,
                           task_runner=task_runner)
        build = bench.build(cfg, f"cold-{runner}")
        snapshot = root / "outputs" / "snapshots" / f"cold-{runner}"
        first = bench.evaluate(cfg, snapshot, f"eval-{runner}")
        regrade_cfg = write_config(root / "config-regrade.yaml", *common, grader_model="bench-grader-2",
                                   embedder=2 * bench.embed_slots, task_runner=task_runner)
        regrade = bench.evaluate(regrade_cfg, snapshot, f"eval-regrade-{runner}")
        out[runner] = {"flow_wall_s": round(build["flow_wall_s"], 1),
                       "build": scale_saturation(build, rate),
                       "evaluation": stage_rate(first, "evaluate", rate),
                       "regrade": stage_rate(regrade, "evaluate", rate),
                       "build_peak_rss_mb": round(build["peak_rss_mb"])}
        manifest = json.loads((snapshot / "MANIFEST.json").read_text(encoding="utf-8"))
        files[runner] = {rel: f["sha256"] for rel, f in manifest["files"].items()
                         if rel.startswith(("prompts.", "rejected.", "data/", "validation_sample"))}
        boards[runner] = first["result"]["leaderboard"]
    out["same_row_files"] = files["threads"] == files["dask"]
    out["same_leaderboard"] = boards["threads"] == boards["dask"]
    return out


def evaluation_only(bench: Bench) -> dict:
    """Figure 8 alone: a cold build (rubric writer on), then `orsc evaluate` on it and the
    re-grade by a second grader, as `bench/run.py` measures them, without the other figures."""
    bench.start()
    cap = bench.capacity()
    s = bench.size
    seeds = synth_seeds(bench.work / "seeds-paper", s["seeds"])
    config = write_config(bench.work / "paper" / "config.yaml", seeds, bench.work / "paper" / "outputs",
                          bench.base_url, s["rewrites"], 2 * bench.slots, s["exact_max"])
    bench.build(config, "cold")
    snapshot = bench.work / "paper" / "outputs" / "snapshots" / "cold"
    return {"size": bench.size_name, "machine": machine(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "endpoint": {"service_ms": bench.service_ms, "slots": bench.slots, **cap},
            "evaluation": bench.evaluation_figure(config, snapshot, seeds, cap["measured_calls_per_s"])}


# -- report ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["build-once"], ["evaluate-once"]):
        ap = argparse.ArgumentParser(prog=f"bench/run.py {argv[0]}")
        for flag in ("--config", "--name", "--result"):
            ap.add_argument(flag, required=True)
        ap.add_argument("--base")
        ap.add_argument("--categories")
        ap.add_argument("--snapshot")
        (build_once if argv[0] == "build-once" else evaluate_once)(ap.parse_args(argv[1:]))
        return 0
    scale, evaluation, two = argv[:1] == ["scale"], argv[:1] == ["evaluation"], argv[:1] == ["callers"]
    if two:
        ap = argparse.ArgumentParser(prog="bench/run.py callers", description=callers.__doc__)
        ap.add_argument("--size", choices=sorted(SIZES), default="paper")
        ap.add_argument("--out", type=Path, default=BENCH / "callers.json")
    elif evaluation:
        ap = argparse.ArgumentParser(prog="bench/run.py evaluation", description=evaluation_only.__doc__)
        ap.add_argument("--size", choices=sorted(SIZES), default="paper")
        ap.add_argument("--out", type=Path, default=BENCH / "evaluation.json")
    elif scale:
        ap = argparse.ArgumentParser(prog="bench/run.py scale", description=scale_probe.__doc__)
        ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[40, 160, 380, 760],
                        help="seeds per category, one cold build each (default 40,160,380,760)")
        ap.add_argument("--out", type=Path, default=BENCH / "scale.json")
    else:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--size", choices=sorted(SIZES), default="paper")
        ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    ap.add_argument("--workdir", type=Path, help="where builds go (default: a temp dir, removed)")
    ap.add_argument("--service-ms", type=float, default=50.0)
    ap.add_argument("--slots", type=int, default=64)
    args = ap.parse_args(argv[1:] if scale or evaluation or two else argv)
    if two:
        with bench_in(args, args.size) as bench:
            results = callers(bench)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({k: results[k] for k in ("threads", "dask", "same_row_files", "same_leaderboard")},
                         indent=2))
        return 0
    if evaluation:
        with bench_in(args, args.size) as bench:
            results = evaluation_only(bench)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        figure = results["evaluation"]
        print(json.dumps({k: figure[k] for k in ("first", "regrade", "rubric_cost", "write_s")}, indent=2))
        return 0
    if scale:
        with bench_in(args, "paper") as bench:
            results = scale_probe(bench, args.seeds)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results.get("per_1k_candidates", results["builds"]), indent=2))
        return 0
    with bench_in(args, args.size) as bench:
        results = bench.run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
