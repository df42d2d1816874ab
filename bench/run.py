"""health-orsc benchmarks: each figure side by side with its limit.

    python bench/run.py                  # paper scale (31,920 candidates), ~20 min on 2 cores
    python bench/run.py --size tiny      # seconds-scale smoke run (tests/package/test_bench.py)
    python bench/run.py scale            # per-candidate costs at 4 sizes, for estimates beyond

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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from health_orsc.core.config import DATA_DIR
from health_orsc.llm.embedded import free_port

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(1, str(REPO))  # tests/fakes/postgres.py: the PostgreSQL server of figure 9
CATEGORY_TO_REGENERATE = "drug_abuse"

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


# -- processes we start and stop ------------------------------------------------------

class Child:
    """A server process in its own process group, stopped with SIGINT then SIGKILL."""

    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()

    def wait_for(self, check, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            result = check()
            if result:
                return result
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not come up; log: {self.log}\n{self.log.read_text()[-2000:]}")


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


# -- figure 1: the endpoint's capacity, measured with a plain async load generator ---------

JUROR_REQUEST = {"model": "m", "messages": [{"role": "user", "content": "Is this safe?"}],
                 "response_format": {"type": "json_object"}}


async def _load(port: int, calls: int, connections: int, path: str = "/v1/chat/completions",
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
    return union_seconds([(arrived, finished) for arrived, _, finished, _ in log])


# -- inputs for a build of a given size ---------------------------------------------------

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
                 embedder: int | None = None, cache_url: str | None = None) -> Path:
    """A bench build's config; `embedder`: embed through the endpoint's /v1/embeddings with
    this many requests in flight (default: the local model); `cache_url`: the caches in
    that PostgreSQL database (default: SQLite under outputs/cache/)."""
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
                  "grader": {"endpoint": "bench", "model": grader_model, "prompt": "xstest.j2"}},
        # the fake endpoint's rewrites are built from a hash, not paraphrases: no off-topic
        # check (bench/off_topic.py measures it on labelled rewrites instead)
        "generation": {"rewrites": rewrites, "min_similarity": None},
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


# -- one build in a child process ----------------------------------------------------------

class RssSampler:
    """This process's RSS every 0.2 s on the monotonic clock (the clock of the flows'
    stage timings), to find which stage holds the peak."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append((time.monotonic(), rss_mb()))

    def by_stage(self, stages: dict) -> dict[str, float]:
        """Peak RSS (MB) sampled within each stage's clock."""
        self._stop.set()
        self._thread.join()
        return {name: round(max((mb for t, mb in self.samples if st.clock[0] <= t <= st.clock[1]),
                                default=0.0))
                for name, st in stages.items()}


def build_once(args: argparse.Namespace) -> None:
    """(child) Run the build-benchmark flow once; write its result, wall time and peak RSS
    (also per stage)."""
    started = time.perf_counter()
    from health_orsc.flows.build import build_benchmark

    sampler = RssSampler()
    flow_started = time.perf_counter()
    result = build_benchmark(args.config, [args.categories] if args.categories else None,
                             args.name, args.base)
    done = time.perf_counter()
    Path(args.result).write_text(json.dumps({
        "result": result.model_dump(mode="json"), "flow_wall_s": done - flow_started,
        "import_s": flow_started - started, "peak_rss_mb": peak_rss_mb(),
        "rss_mb_by_stage": sampler.by_stage(result.stages),
    }))


def evaluate_once(args: argparse.Namespace) -> None:
    """(child) Run the evaluate-benchmark flow once; write its result, wall time and peak RSS."""
    started = time.perf_counter()
    from health_orsc.flows.evaluate import evaluate_benchmark

    flow_started = time.perf_counter()
    result = evaluate_benchmark(args.config, args.snapshot, None, args.name)
    done = time.perf_counter()
    Path(args.result).write_text(json.dumps({
        "result": result.model_dump(mode="json"), "flow_wall_s": done - flow_started,
        "import_s": flow_started - started, "peak_rss_mb": peak_rss_mb(),
    }))


def _status_mb(field: str) -> float | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def rss_mb() -> float:
    """This process's resident set now (VmRSS)."""
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over exec, so a child would report its parent's peak if that was higher."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
                    "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
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
        rate = asyncio.run(_load(self.port, self.size["capacity_calls"], 2 * self.slots))
        self.calls_log()
        return {"nominal_calls_per_s": self.slots / (self.service_ms / 1000),
                "measured_calls_per_s": round(rate, 1), "calls": self.size["capacity_calls"],
                "connections": 2 * self.slots}

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
        rate = batch * asyncio.run(_load(self.port, requests, 2 * self.embed_slots, "/v1/embeddings",
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
                "client": "openai.AsyncOpenAI over openai.DefaultAioHttpClient (post)",
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


def saturation(cold: dict, capacity: float) -> dict:
    """Per endpoint-bound stage of the build: see `stage_rate`."""
    out: dict = {stage: stage_rate(cold, stage, capacity, (stage,)) for stage in ("generate", "jury")}
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
    covered = union_seconds([(a, f) for a, _, f, _ in cold["calls_log"]] + embed_dedup)
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


def edit_seeds(path: Path) -> None:
    """A change to one category's seeds that reaches every level's template text."""
    data = yaml.safe_load(path.read_text())
    for t in data["topics"]:
        t["slots"] = {k: v.replace("case ", "revised case ") for k, v in t["slots"].items()}
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=200), encoding="utf-8")


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


def dedup_inputs(snapshot: Path) -> list[str]:
    """The prompts the cold build's dedup stage saw: every usable generated prompt."""
    rows = [json.loads(line) for name in ("prompts.jsonl", "rejected.jsonl")
            for line in (snapshot / name).read_text().splitlines()]
    return [r["prompt"] for r in rows if r.get("reason") != "unusable_rewrite"]


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
    method = "exact (numpy blocked)" if len(vectors) <= limit else "faiss IVF-Flat range search"
    return ours, exact, {"vectors": len(vectors), "method": method, "seconds": round(ours_s, 2),
                         "numpy_blocked_seconds": round(limit_s, 2),
                         "time_ratio": round(ours_s / limit_s, 3), "pairs_exact": len(exact)}


def search_real(vectors: np.ndarray, exact_max: int | None) -> dict:
    ours, exact, out = search_vs_limit(vectors, exact_max)
    return {**out, "pairs_found": len(ours & exact),
            "recall": round(len(ours & exact) / len(exact), 4) if exact else 1.0}


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


def search_synthetic(n: int, exact_max: int | None) -> dict:
    vectors, planted = planted_vectors(n)
    ours, exact, out = search_vs_limit(vectors, exact_max)
    return {**out, "planted_pairs": len(planted), "planted_found": len(planted & ours),
            "planted_recall": round(len(planted & ours) / len(planted), 4),
            "recall_all_pairs": round(len(ours & exact) / len(exact), 4)}


def validation_figure(snapshot: Path, labels: int, work: Path, env: dict) -> dict:
    """`orsc annotate`, then scripted people fill `labels` labels (1 in 10 harmful, every
    item labelled by all annotators), then `orsc validate` and `orsc verify` of its snapshot,
    each timed as a command (process start and imports included)."""
    import csv
    import hashlib
    import math

    def orsc(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "health_orsc", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    with (snapshot / "validation_sample.csv").open(encoding="utf-8") as fh:
        items = sum(1 for _ in csv.DictReader(fh))
    annotators = max(2, math.ceil(labels / items))
    tasks = work / "tasks"
    annotate_s = orsc("annotate", str(snapshot), "--out", str(tasks), "--annotators", str(annotators))
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
    validate_s = orsc("validate", str(snapshot), *files, "--name", name, "--gate")
    verify_s = orsc("verify", str(snapshot.parent / name))
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
    for n in seeds_per_category:
        seeds = synth_seeds(bench.work / f"seeds-{n}", n)
        out = bench.work / f"probe-{n}" / "outputs"
        cfg = write_config(out.parent / "config.yaml", seeds, out, bench.base_url, 4, 2 * bench.slots,
                           embedder=2 * bench.embed_slots)
        b = bench.build(cfg, f"probe-{n}")
        rows.append({"seeds_per_category": n,
                     "candidates": sum(r["generated"] for r in b["result"]["summary"]),
                     "model_calls": sum(1 for c in b["calls_log"] if c[3] != "embed"),
                     "flow_wall_s": round(b["flow_wall_s"], 1), "peak_rss_mb": round(b["peak_rss_mb"]),
                     "rss_mb_by_stage": b["rss_mb_by_stage"],
                     "request_cache_mb": size_mb(out / "cache" / "llm.sqlite"),
                     "embedding_cache_mb": size_mb(out / "cache" / "embeddings.sqlite"),
                     "stage_files_mb": size_mb(out / "stages"),
                     "snapshot_mb": size_mb(out / "snapshots" / f"probe-{n}")})
    x = np.array([r["candidates"] for r in rows], dtype=float) / 1000

    def per_1k(values: list[float]) -> float:
        return round(float(np.polyfit(x, np.array(values, dtype=float), 1)[0]), 2)

    stages = rows[-1]["rss_mb_by_stage"]
    return {"builds": rows, "per_1k_candidates": {
        "model_calls": per_1k([r["model_calls"] for r in rows]),
        "flow_wall_s": per_1k([r["flow_wall_s"] for r in rows]),
        "peak_rss_mb": per_1k([r["peak_rss_mb"] for r in rows]),
        "rss_mb_by_stage": {st: per_1k([r["rss_mb_by_stage"][st] for r in rows]) for st in stages},
        **{k: per_1k([r[k] for r in rows])
           for k in ("request_cache_mb", "embedding_cache_mb", "stage_files_mb", "snapshot_mb")}}}


# -- report ---------------------------------------------------------------------------------

def table(r: dict) -> str:
    sat, orch, emb, rb = r["endpoint_saturation"], r["orchestration"], r["embedding"], r["rebuild"]
    real, syn, gr = r["search"]["real"], r["search"]["synthetic"], r["growth"]
    ee, eb = r["embedding_endpoint"], r["embedder_build"]
    cap = r["endpoint"]["measured_calls_per_s"]
    lines = [
        f"health-orsc bench ({r['size']}), {r['date']}, {r['machine']['cpus']} CPUs, {r['machine']['cpu']}",
        "",
        "| # | figure | measured | limit | ratio | goal |",
        "|---|---|---|---|---|---|",
        f"| 1 | endpoint capacity ({r['endpoint']['slots']} slots x {r['endpoint']['service_ms']:g} ms) |"
        f" {cap:.0f} calls/s (plain async load) | {r['endpoint']['nominal_calls_per_s']:.0f} calls/s |"
        f" {cap / r['endpoint']['nominal_calls_per_s']:.3f} | |",
    ]
    gw = r["gateway"]
    lines.append(f"| 1 | gateway CPU per call ({gw['calls']} juror calls, {gw['client']}) |"
                 f" {gw['cpu_ms_per_call']} ms | {1000 / cap:.3f} ms (one core at endpoint capacity) |"
                 f" {gw['cpu_ms_per_call'] * cap / 1000:.3f} | < 1 |")
    for stage in ("generate", "jury"):
        st = sat[stage]
        lines.append(f"| 1 | {stage}: {st['calls']} calls in {st['wall_s']} s | {st['calls_per_s']:.0f}"
                     f" calls/s | {cap:.0f} calls/s | {st['ratio']:.3f} | >= 0.9 |")
    lines += [
        f"| 2 | Prefect + bookkeeping ({sat['candidates']} candidates) | {orch['overhead_s']} s of"
        f" {orch['flow_wall_s']} s flow wall | endpoint busy {orch['endpoint_busy_s']} s, embed + dedup"
        f" {orch['dedup_s']} s (overlapping) | {orch['overhead_share']:.3f} | < 0.05 |",
        f"| 2 | peak RSS, Prefect tasks | {orch['peak_rss_mb']} MB, {orch['prefect_tasks']} tasks |"
        " 4096 MB | | < 4 GB |",
        f"| 3 | embedding {emb['texts']} texts (batch {emb['pipeline_batch_size']}) |"
        f" {emb['pipeline_texts_per_s']:.0f} texts/s | {emb['bare_texts_per_s']:.0f} texts/s (bare encode,"
        f" batch {emb['bare_best_batch_size']}) | {emb['ratio']:.3f} | >= 0.95 |",
        f"| 3 | embedding through /v1/embeddings ({ee['texts']} texts, requests of {ee['batch_size']}) |"
        f" {ee['texts_per_s']:.0f} texts/s | {ee['capacity_texts_per_s']:.0f} texts/s (plain async load;"
        f" {ee['nominal_texts_per_s']:.0f} nominal) | {ee['ratio']:.3f} | >= 0.9 |",
        f"| 3 | cold build embedding through the endpoint | {eb['flow_wall_s']} s flow wall, dedup"
        f" {eb['dedup_s']} s, embedding done {eb['embed_tail_s']} s after generate | local model:"
        f" {eb['local_flow_wall_s']} s, dedup {eb['local_dedup_s']} s, {eb['local_embed_tail_s']} s after"
        " generate | | |",
        f"| 4 | search {real['vectors']} real vectors, {real['method']} | {real['seconds']} s, recall"
        f" {real['recall']} | {real['numpy_blocked_seconds']} s numpy blocked | {real['time_ratio']:.3f} |"
        " <= 1.5 |",
        f"| 4 | search {syn['vectors']} synthetic, {syn['method']} | {syn['seconds']} s, planted recall"
        f" {syn['planted_recall']} ({syn['planted_found']}/{syn['planted_pairs']}) |"
        f" {syn['numpy_blocked_seconds']} s numpy blocked | {syn['time_ratio']:.3f} | recall >= 0.99 |",
        f"| 5 | warm rebuild | {rb['warm_model_calls']} calls, {rb['warm_process_wall_s']} s |"
        f" cold {rb['cold_process_wall_s']} s | {rb['warm_wall_ratio']:.3f} | 0 calls, <= 0.05 |",
        f"| 5 | regenerate {rb['regenerated']} | {rb['regen_model_calls']} calls |"
        f" {rb['category_calls_in_cold_build']} calls in the cold build | {rb['regen_call_ratio']} |"
        " <= 1.05 |",
    ]
    va = r["validation"]
    lines.append(f"| 7 | orsc validate --gate: {va['labels']} labels ({va['annotators']} annotators x"
                 f" {va['sample_items']} items) on {va['snapshot_rows']} rows | {va['validate_s']} s"
                 f" (annotate {va['annotate_s']} s, verify {va['verify_s']} s) | | | seconds |")
    ev = r["evaluation"]
    for label, st in ((f"evaluate {ev['prompts']} prompts x {ev['models']} models (answers + grades)",
                       ev["first"]), ("re-grade every answer (grader stage alone)", ev["regrade"])):
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(st["by_kind"].items()))
        lines.append(f"| 8 | {label}: {st['calls']} calls ({kinds}) in {st['wall_s']} s |"
                     f" {st['calls_per_s']:.0f} calls/s | {cap:.0f} calls/s | {st['ratio']:.3f} | >= 0.9 |")
    lines.append(f"| 8 | evaluation metrics, difficulty, report and files ({ev['tasks']} tasks) |"
                 f" {ev['write_s']} s, peak RSS {ev['peak_rss_mb']} MB | | | |")
    cb = r["cache_backends"]
    if "skipped" in cb:
        lines.append(f"| 9 | request cache in PostgreSQL | skipped: {cb['skipped']} | | | |")
    else:
        sq, pg = r["gateway"]["sqlite_bursts"], cb["postgres_bursts"]
        for what in ("hit", "miss"):
            a, b = pg[what], sq[what]
            lines.append(f"| 9 | cache {what}, {sq['calls']} juror calls: PostgreSQL |"
                         f" {a['wall_us_per_call']} us/call ({a['cpu_us_per_call']} us CPU),"
                         f" {a['calls_per_s']:.0f} calls/s | SQLite {b['wall_us_per_call']} us/call"
                         f" ({b['cpu_us_per_call']} us CPU),"
                         f" {b['calls_per_s']:.0f} calls/s | {a['calls_per_s'] / b['calls_per_s']:.3f} | |")
        for stage in ("generate", "jury"):
            a, b = cb["builds"]["postgres"][stage], cb["builds"]["sqlite"][stage]
            lines.append(f"| 9 | cold build, cache in PostgreSQL: {stage} {a['calls']} calls in"
                         f" {a['wall_s']} s |"
                         f" {a['calls_per_s']:.0f} calls/s ({a['ratio']:.3f} of capacity) | SQLite:"
                         f" {b['calls_per_s']:.0f} calls/s ({b['ratio']:.3f}) | {a['ratio']:.3f} | >= 0.9 |")
    for g in gr["builds"]:
        lines.append(f"| 6 | growth {g['factor']}x: {g['candidates']} candidates | {g['flow_wall_s']} s,"
                     f" {g['peak_rss_mb']} MB | | {g['ms_per_candidate']} ms/candidate | linear |")
    lines.append(f"| 6 | per-candidate cost, 4x over 1x | | | {gr['per_candidate_cost_4x_over_1x']} |"
                 " about 1 |")
    return "\n".join(lines)


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
    scale = argv[:1] == ["scale"]
    if scale:
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
    args = ap.parse_args(argv[1:] if scale else argv)
    if scale:
        with bench_in(args, "paper") as bench:
            results = scale_probe(bench, args.seeds)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results["per_1k_candidates"], indent=2))
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
