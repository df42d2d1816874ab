"""The `build-benchmark` Prefect flow: wiring only; the logic lives in pipeline/.

Tasks are (stage x category), never one prompt. Each task takes the config path
and a fingerprint of what shapes its output, writes its records to a
content-addressed file under outputs/stages/ and returns that path. The cache
policy is INPUTS + TASK_SOURCE (no RUN_ID), so a task whose inputs and code are
unchanged comes back from Prefect's cache in the next run too (results are
persisted in Prefect's local storage, under PREFECT_HOME; `orsc build` puts
PREFECT_HOME under outputs/ unless it is already set).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.base import open_base, plan_rebuild
from pipeline.config import BuildConfig, TaskRunnerConfig, load_config
from pipeline.dedup import Embedder, EmbeddingCache, dedup_candidates
from pipeline.export import snapshot_meta, stage_summary, write_snapshot
from pipeline.fingerprint import category_fingerprint, fingerprint_components
from pipeline.generate import generate_category
from pipeline.inputs import BuildInputs, load_inputs
from pipeline.jury import calibrate_jurors, calibration_summary, judge_category
from pipeline.llm import Gateway, Usage
from pipeline.records import CATEGORIES, CalibrationVote, Decision, content_id, read_jsonl, write_jsonl
from pipeline.sample import stratified_sample
from pipeline.store import check_snapshot_name, default_snapshot_name, stage_path

FLOW_NAME = "build-benchmark"

_gateways: dict[str, Gateway] = {}
_gateways_lock = threading.Lock()


def gateway_for(config: BuildConfig) -> Gateway:
    """One gateway per config per process, shared by every task thread. In a Dask
    worker process it lives until the worker exits (atexit stops its servers)."""
    key = str(config.source)
    with _gateways_lock:
        if key not in _gateways:
            _gateways[key] = Gateway(config)
        return _gateways[key]


def close_gateways() -> None:
    """Stop embedded servers and close clients of this process's gateways."""
    with _gateways_lock:
        for gw in _gateways.values():
            gw.close()
        _gateways.clear()


atexit.register(close_gateways)  # once per process, not once per build


def publish_table(stage: str, decisions: list[Decision], category: str | None = None) -> None:
    """A Prefect table artifact per stage (x category): kept and rejected-by-reason counts
    per category x level, so a run reads in the Prefect UI."""
    counts: dict[tuple[str, str], Counter] = {}
    for d in decisions:
        key = (d.candidate.category, d.candidate.level)
        counts.setdefault(key, Counter())["kept" if d.kept else f"rejected: {d.reason}"] += 1
    reasons = sorted({r for c in counts.values() for r in c if r != "kept"})
    table = [{"category": cat, "level": lvl, "candidates": sum(c.values()), "kept": c["kept"],
              **{r: c[r] for r in reasons}} for (cat, lvl), c in counts.items()]
    key = "-".join(filter(None, [stage, category])).replace("_", "-")
    create_table_artifact(table=table, key=key,
                          description=f"{stage}{' ' + category if category else ''}: kept and rejected")


def _inputs(config_path: str, categories: list[str]) -> BuildInputs:
    return load_inputs(load_config(config_path), categories)


@task(name="generate", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def generate_task(config_path: str, outputs_dir: str, category: str, fingerprint: str) -> dict:
    inputs = _inputs(config_path, [category])
    gw = gateway_for(inputs.config)
    usage = Usage()
    decisions = gw.run(generate_category(inputs, category, gw), usage)
    out = stage_path(Path(outputs_dir), "generate", f"{category}-{fingerprint}")
    write_jsonl(out, decisions)
    publish_table("generate", decisions, category)
    get_run_logger().info("generate %s: %d candidates (%d unusable rewrites rejected)", category,
                          len(decisions), sum(not d.kept for d in decisions))
    return {"path": str(out), **usage.as_dict()}


@task(name="dedup", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def dedup_task(config_path: str, outputs_dir: str, categories: list[str], generated: list[str],
               key: str, base: str | None = None, carried: list[str] | None = None) -> dict:
    """Across all categories; kept prompts of carried-over categories are fixed keepers.
    Writes a directory with one file per category, so each jury task reads only its own."""
    config = load_config(config_path)
    candidates = [d.candidate for p in generated for d in read_jsonl(Path(p), Decision) if d.kept]
    keepers = ([d.candidate for d in open_base(Path(base), verify=False).decisions(carried or [])
                if d.kept]
               if base else [])
    cache = EmbeddingCache(config.outputs_dir / "cache" / "embeddings.sqlite")
    try:
        embedder = Embedder(config.dedup.model_path, config.dedup.batch_size, cache)
        decisions = dedup_candidates(candidates, config.dedup, embedder, keepers)
    finally:
        cache.close()
    out = stage_path(Path(outputs_dir), "dedup", key).with_suffix("")
    for category in categories:
        write_jsonl(dedup_file(out, category),
                    [d for d in decisions if d.candidate.category == category])
    publish_table("dedup", decisions)
    get_run_logger().info("dedup: %d candidates, %d near-duplicates dropped (threshold %.2f)",
                          len(decisions), sum(not d.kept for d in decisions), config.dedup.threshold)
    return {"path": str(out)}


@task(name="jury", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def jury_task(config_path: str, outputs_dir: str, category: str, deduped: str,
              fingerprint: str) -> dict:
    """Writes the category's decisions and, beside them, the jury's calibration votes."""
    inputs = _inputs(config_path, [category])
    candidates = [d.candidate for d in read_jsonl(dedup_file(Path(deduped), category), Decision)
                  if d.kept]
    gw = gateway_for(inputs.config)
    usage = Usage()
    decisions = gw.run(judge_category(inputs, category, candidates, gw), usage)
    calibration = (gw.run(calibrate_jurors(inputs, category, inputs.seeds[category], gw), usage)
                   if inputs.config.jury.calibrate else [])
    out = stage_path(Path(outputs_dir), "jury",
                     f"{category}-{content_id([Path(deduped).stem, fingerprint])}")
    write_jsonl(calibration_path(out), calibration)
    write_jsonl(out, decisions)
    publish_table("jury", decisions, category)
    reasons = [d.reason for d in decisions if not d.kept]
    get_run_logger().info("jury %s: %d kept, %d judged harmful, %d unparseable", category,
                          len(decisions) - len(reasons), reasons.count("jury_harmful"),
                          reasons.count("unparseable_verdict"))
    return {"path": str(out), **usage.as_dict()}


def dedup_file(dedup_dir: Path, category: str) -> Path:
    return dedup_dir / f"{category}.jsonl"


def calibration_path(jury_output: Path) -> Path:
    return jury_output.with_name(jury_output.stem + ".calibration.jsonl")


class StageStats:
    """Per stage: wall time, tasks (and how many came from Prefect's cache), model
    calls and request-cache hits made by this build."""

    def __init__(self):
        self.stages: dict[str, dict] = {}
        self.calls_by_category: Counter[str] = Counter()

    def run(self, stage_task, calls: list[tuple], categories: list[str] | None = None) -> list[str]:
        """Submit one task per argument tuple and return their output paths. A cached
        result whose stage file was deleted is recomputed. `categories` names the
        category of each task, to count model calls per category."""
        started = time.monotonic()
        futures = [stage_task.submit(*args) for args in calls]
        # Let every task finish before raising for one that failed: the gateway they
        # share is closed when the flow ends, and a task still using it would hang.
        wait(futures)
        paths, cached = [], 0
        calls_made: Counter[str] = Counter()
        hits: Counter[str] = Counter()
        for i, (future, args) in enumerate(zip(futures, calls, strict=True)):
            result = future.result()
            if not Path(result["path"]).exists():
                result = stage_task.with_options(refresh_cache=True)(*args)
            elif future.state.name == "Cached":
                cached += 1
                result = {"path": result["path"]}  # its calls were made by an earlier build
            calls_made.update(result.get("calls", {}))
            hits.update(result.get("cache_hits", {}))
            if categories:
                self.calls_by_category[categories[i]] += sum(result.get("calls", {}).values())
            paths.append(result["path"])
        self.record(stage_task.name, started, len(calls), cached, calls_made, hits)
        return paths

    def record(self, stage: str, started: float, tasks: int, cached: int = 0,
               calls: Counter | None = None, hits: Counter | None = None) -> None:
        ended = time.monotonic()
        self.stages[stage] = {
            # monotonic clock at start and end, to line up with an endpoint's own log (bench/)
            "clock": [started, ended], "wall_s": round(ended - started, 3), "tasks": tasks,
            "tasks_cached": cached, "model_calls": dict(calls or {}), "cache_hits": dict(hits or {})}

    def total(self, field: str) -> dict[str, int]:
        out: Counter[str] = Counter()
        for stage in self.stages.values():
            out.update(stage[field])
        return dict(out)


@task(name="export")
def export_task(config_path: str, categories: list[str], generated: list[str], deduped: str,
                judged: list[str], fingerprints: dict[str, str], name: str,
                base: str | None = None, carried: list[str] | None = None,
                started_at: str = "") -> dict:
    inputs = _inputs(config_path, categories)
    cfg = inputs.config
    carried = carried or []
    base_snap = open_base(Path(base), verify=False) if base else None
    gen_decisions = [d for p in generated for d in read_jsonl(Path(p), Decision)]
    dedup_decisions = [d for c in categories for d in read_jsonl(dedup_file(Path(deduped), c), Decision)]
    jury_decisions = [d for p in judged for d in read_jsonl(Path(p), Decision)]
    calibration = [v for p in judged for v in read_jsonl(calibration_path(Path(p)), CalibrationVote)]
    if base_snap:  # carried-over categories come from the base snapshot as they are
        carried_decisions = base_snap.decisions(carried)
        calibration += base_snap.calibration(carried)
        fingerprints = {**base_snap.fingerprints(carried), **fingerprints}
        components = base_snap.fingerprint_components(carried)
    else:
        carried_decisions, components = [], {}
    kept = [d for d in jury_decisions + carried_decisions if d.kept]
    rejected = ([d for d in gen_decisions if not d.kept] + [d for d in dedup_decisions if not d.kept]
                + [d for d in jury_decisions + carried_decisions if not d.kept])
    sample = stratified_sample(kept, cfg.sample)
    components.update({c: fingerprint_components(inputs, c) for c in categories})
    meta = snapshot_meta(
        inputs, sorted([*categories, *carried], key=CATEGORIES.index), fingerprints, components,
        calibration_summary(calibration), base=base_snap.path.name if base_snap else None,
        started_at=started_at)
    path = write_snapshot(cfg.outputs_dir, name, kept, rejected, sample, calibration, meta)
    get_run_logger().info("export: %d prompts, %d rejected -> %s", len(kept), len(rejected), path)
    return {"snapshot": str(path), "jury_calibration": meta["jury_calibration"],
            "summary": stage_summary(gen_decisions, dedup_decisions, jury_decisions)}


def task_runner_for(cfg: TaskRunnerConfig):
    if cfg.name == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.address:
            return DaskTaskRunner(address=cfg.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.n_workers, "processes": True,
                                              "threads_per_worker": cfg.threads_per_worker,
                                              "dashboard_address": None})
    # One thread per (stage x category) task, so no category waits for a free thread.
    return ThreadPoolTaskRunner(max_workers=16)


def run_stages(config_path: str, cats: list[str], fps: dict[str, str], name: str,
               base: str | None, carry: list[str], carried_fps: dict[str, str],
               started_at: str) -> dict:
    """generate -> dedup -> jury -> export for the categories being (re)built."""
    cfg = load_config(config_path)
    out = str(cfg.outputs_dir)
    stats = StageStats()
    generated = stats.run(generate_task, [(config_path, out, c, fps[c]) for c in cats], cats)
    dedup_key = content_id([Path(p).stem for p in generated]
                           + [cfg.dedup.model_dump(exclude={"batch_size"})]
                           + list(carried_fps.values()))
    [deduped] = stats.run(dedup_task, [(config_path, out, cats, generated, dedup_key, base, carry)])
    judged = stats.run(jury_task, [(config_path, out, c, deduped, fps[c]) for c in cats], cats)
    started = time.monotonic()
    result = export_task(config_path, cats, generated, deduped, judged, fps, name, base, carry,
                         started_at)
    stats.record("export", started, tasks=1)
    tasks = [s for k, s in stats.stages.items() if k != "export"]
    return {**result, "model_calls": stats.total("model_calls"),
            "cache_hits": stats.total("cache_hits"), "stages": stats.stages,
            "calls_by_category": dict(stats.calls_by_category),
            "stage_tasks": sum(s["tasks"] for s in tasks),
            "stage_tasks_cached": sum(s["tasks_cached"] for s in tasks)}


@flow(name=FLOW_NAME, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def build_benchmark(config_path: str, categories: list[str] | None = None,
                    name: str | None = None, base: str | None = None) -> dict:
    """seeds -> generate -> dedup -> jury -> sample -> export, on one config.

    With `base` (a snapshot directory), only the categories named in `categories`,
    or else those whose fingerprint changed, are rebuilt; the rest are carried over.
    With `task_runner: dask` in the config, the stages run as a subflow on Dask.
    """
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    inputs = load_inputs(load_config(config_path), categories)
    cfg = inputs.config
    name = check_snapshot_name(cfg.outputs_dir, name or default_snapshot_name())
    base_snap = open_base(Path(base)) if base else None
    plan = plan_rebuild(inputs, base_snap, named=bool(categories))
    for cat, why in plan.reasons.items():
        get_run_logger().info("%s: %s", cat, why)
    fps = {c: category_fingerprint(inputs, c) for c in plan.rebuild}
    args = (config_path, plan.rebuild, fps, name, str(base_snap.path) if base_snap else None,
            plan.carry, base_snap.fingerprints(plan.carry) if base_snap else {}, started_at)
    try:
        if cfg.task_runner.name == "thread":
            result = run_stages(*args)
        else:
            stages = flow(run_stages, name=f"{FLOW_NAME}-stages", log_prints=True,
                          task_runner=task_runner_for(cfg.task_runner))
            result = stages(*args)
    finally:
        close_gateways()
    return {**result, "plan": plan.reasons, "task_runner": cfg.task_runner.name}
