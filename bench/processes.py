"""bench/: the processes a benchmark starts and measures - servers in their own process
group (stopped with SIGINT, then SIGKILL), and one build or evaluation per child process
(`python bench/run.py build-once ...`), so each one's wall time and peak RSS are its own."""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path


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
            self.samples.append((time.monotonic(), rss_mb(), _status_mb("RssFile") or 0.0))

    def by_stage(self, stages: dict) -> dict[str, dict[str, float]]:
        """Peak RSS (MB) sampled within each stage's clock, and of it the pages of mapped
        files (the dedup stage's memory-mapped vectors: the kernel drops them first)."""
        self._stop.set()
        self._thread.join()

        return {"rss_mb_by_stage": {name: peak_within(self.samples, st) for name, st in stages.items()},
                "file_rss_mb_by_stage": {name: peak_within(self.samples, st, 2)
                                         for name, st in stages.items()}}


def peak_within(samples: list[tuple], stage, column: int = 1) -> float:
    """The highest `column` of the (monotonic time, ...) samples taken within a stage's clock."""
    return round(max((s[column] for s in samples if stage.clock[0] <= s[0] <= stage.clock[1]), default=0.0))


class HeapSampler:
    """With ORSC_BENCH_TRACE=1: the Python heap's peak (tracemalloc, numpy arrays included,
    memory maps and C++ allocations not) in every 0.5 s, and at each new high the top
    allocation sites, to tell what a stage itself holds from what the process kept."""

    def __init__(self):
        import tracemalloc

        self.tm = tracemalloc
        tracemalloc.start(6)
        self.samples: list[tuple[float, float]] = []
        self.highs: list[tuple[float, float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        high = 0.0
        while not self._stop.wait(0.5):
            _, peak = self.tm.get_traced_memory()
            self.tm.reset_peak()
            mb = peak / 2**20
            self.samples.append((time.monotonic(), mb))
            if mb > 1.25 * high:
                high = mb
                top = self.tm.take_snapshot().statistics("traceback")[:12]
                self.highs.append((time.monotonic(), round(mb), [
                    f"{s.size / 2**20:.1f} MB {s.count} blocks: "
                    + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in s.traceback)
                    for s in top]))

    def by_stage(self, stages: dict) -> dict:
        self._stop.set()
        self._thread.join()
        self.tm.stop()
        return {"heap_mb_by_stage": {name: peak_within(self.samples, st) for name, st in stages.items()},
                "heap_highs": [{"stage": next((n for n, st in stages.items()
                                               if st.clock[0] <= t <= st.clock[1]), None),
                                "mb": mb, "top": top} for t, mb, top in self.highs]}


def build_once(args: argparse.Namespace) -> None:
    """(child) Run the build-benchmark flow once; write its result, wall time and peak RSS
    (also per stage; with ORSC_BENCH_TRACE=1 the Python heap's per stage too)."""
    started = time.perf_counter()
    from health_orsc.flows.build import build_benchmark

    heap = HeapSampler() if os.environ.get("ORSC_BENCH_TRACE") == "1" else None
    sampler = RssSampler()
    flow_started = time.perf_counter()
    result = build_benchmark(args.config, [args.categories] if args.categories else None,
                             args.name, args.base)
    done = time.perf_counter()
    Path(args.result).write_text(json.dumps({
        "result": result.model_dump(mode="json"), "flow_wall_s": done - flow_started,
        "import_s": flow_started - started, "peak_rss_mb": peak_rss_mb(),
        **sampler.by_stage(result.stages),
        **(heap.by_stage(result.stages) if heap else {}),
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
