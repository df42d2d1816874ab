"""The `build-benchmark` Prefect flow: wiring only; the logic lives in health_orsc/build/stages.py.

Tasks are (stage x category), never one prompt. Each task takes the config path and
a fingerprint of what shapes its output (only the inputs its stage reads), writes its
records to a content-addressed file under outputs/stages/ and returns that path with
the stage's counts. The cache policy is INPUTS + TASK_SOURCE (no RUN_ID), so a task
whose inputs and code are unchanged comes back from Prefect's cache in the next run
too (results are persisted in Prefect's local storage, under PREFECT_HOME; `orsc
build` puts PREFECT_HOME under outputs/ unless it is already set).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from health_orsc.audit.verify import open_verified
from health_orsc.build.alongside import embedder_alongside
from health_orsc.build.export import export_stage
from health_orsc.build.fingerprint import stage_keys
from health_orsc.build.plan import plan_rebuild
from health_orsc.build.stages import (
    BuildResult,
    StageOutput,
    dedup_key,
    dedup_stage,
    embed_stage,
    generate_stage,
    jury_stage,
    summary_rows,
)
from health_orsc.cache.requests import RequestCache
from health_orsc.core.config import load_config
from health_orsc.core.records import content_id
from health_orsc.flows.runner import run_on
from health_orsc.inputs.load import BuildInputs, load_inputs
from health_orsc.llm import Usage, close_gateways, gateway_for
from health_orsc.llm.accounting import StageTally, TaskResult
from health_orsc.runtime.memory import give_back, limit_arenas
from health_orsc.runtime.progress import note, tracked
from health_orsc.snapshot.handle import Snapshot
from health_orsc.snapshot.store import (
    check_snapshot_name,
    default_snapshot_name,
    load_manifest,
    remove_stale_temp_dirs,
)

FLOW_NAME = "build-benchmark"

# As this module is imported, before the flow starts Prefect's threads and the stage
# tasks': a thread keeps the arena it first allocated in (runtime/memory.py).
limit_arenas()


def _inputs(config_path: str, categories: list[str]) -> BuildInputs:
    """A stage task's inputs: its templates are not rendered against every seed again
    (build_benchmark did that as it started, before any task)."""
    return load_inputs(load_config(config_path), categories, renders=False)


def _finish(stage: str, out: StageOutput, order: list[str], usage: Usage | None = None,
            category: str | None = None) -> TaskResult:
    """Publish a stage task's counts as a Prefect table artifact, log them, return its result."""
    key = "-".join(filter(None, [stage, category])).replace("_", "-")
    create_table_artifact(table=out.counts.table(order), key=key,
                          description=f"{stage}{' ' + category if category else ''}: kept and rejected")
    get_run_logger().info("%s%s: %d candidates, %d kept", stage, f" {category}" if category else "",
                          out.counts.total(), out.counts.total(outcome="kept"))
    return TaskResult.of(out.path, out.counts, usage)


# Every stage task takes `outputs_dir` although its config names it: as a task input it is
# part of Prefect's cache key, so a cached result never points into another outputs dir.

@task(name="generate", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def generate_task(config_path: str, outputs_dir: str, category: str, fingerprint: str) -> TaskResult:
    inputs = _inputs(config_path, [category])
    gateway = gateway_for(inputs.config)
    with tracked("generate", category) as progress, embedder_alongside(inputs.config, gateway) as embed:
        usage = Usage(progress=progress)
        out = generate_stage(inputs, category, fingerprint, gateway, usage, embed)
    return _finish("generate", out, [category], usage, category)


@task(name="embed", cache_policy=(INPUTS - "generated") + TASK_SOURCE, persist_result=True)
def embed_task(config_path: str, outputs_dir: str, category: str, key: str,
               generated: TaskResult) -> TaskResult:
    """A category's prompts into the embedding cache, as soon as its generate task has
    returned (`generated`, its result): with the local model this overlaps the other
    categories' model calls; with an embedder endpoint generate embedded them as it wrote
    them, and this finds them in the cache (or embeds what it did not, e.g. for a generate
    result from Prefect's cache). `key`: the generate task's fingerprint and the embedding
    model (Prefect's cache key; `generated` differs between runs in its call counts)."""
    config = load_config(config_path)
    generated = TaskResult.model_validate(generated)  # (a dict, from a run before TaskResult)
    if generated.file_missing():  # a cached generate result whose file is gone:
        return TaskResult.of(generated.path)  # dedup embeds its prompts once it is rebuilt
    gateway = gateway_for(config) if config.dedup.embedder else None
    with tracked("embed", category, unit="texts embedded") as progress:
        usage = embed_stage(config, generated.path, gateway, progress)
    return TaskResult.of(generated.path, usage=usage)  # it decides nothing: no counts


@task(name="dedup", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def dedup_task(config_path: str, outputs_dir: str, categories: list[str], generated: list[str], key: str,
               base: str | None = None, carried: list[str] | None = None) -> TaskResult:
    base_snap = Snapshot.open(Path(base)) if base else None
    config = load_config(config_path)
    gateway = gateway_for(config) if config.dedup.embedder else None
    with tracked("dedup", unit="texts embedded") as progress:
        out = dedup_stage(config, categories, generated, key, base_snap, carried or [], progress, gateway)
    return _finish("dedup", out, categories)


@task(name="jury", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def jury_task(config_path: str, outputs_dir: str, category: str, deduped: str,
              fingerprint: str) -> TaskResult:
    inputs = _inputs(config_path, [category])
    with tracked("jury", category) as progress:
        usage = Usage(progress=progress)
        out = jury_stage(inputs, category, deduped, fingerprint, gateway_for(inputs.config), usage)
    return _finish("jury", out, [category], usage, category)


@task(name="export")
def export_task(config_path: str, built: list[str], generated: list[str], deduped: str,
                judged: list[str], name: str, base: str | None, carried: list[str],
                started_at: str) -> dict:
    base_snap = Snapshot.open(Path(base)) if base else None
    path = export_stage(_inputs(config_path, built), name, built, generated, deduped, judged, base_snap,
                        carried, started_at)
    manifest = load_manifest(path)
    get_run_logger().info("export: %s (%s)", path, manifest.digest)
    return {"snapshot": str(path), "digest": manifest.digest, "jury_calibration": manifest.jury_calibration}


class Submitted(NamedTuple):
    """A stage's tasks, submitted at `started` (monotonic clock)."""

    stage_task: Any
    calls: list[tuple]
    categories: list[str] | None
    started: float
    futures: list


def submit(stage_task, calls: list[tuple], categories: list[str] | None = None) -> Submitted:
    """One task per argument tuple; `categories` names each task's category."""
    return Submitted(stage_task, calls, categories, time.monotonic(),
                     [stage_task.submit(*args) for args in calls])


def collect(tally: StageTally, submitted: Submitted) -> list[str]:
    """Wait for a submitted stage's tasks and add them to `tally`; their stage files. A
    result from Prefect's cache whose stage file was deleted is computed again."""
    stage_task, calls, categories, started, futures = submitted
    # Let every task finish before raising for one that failed: the gateway they
    # share is closed when the flow ends, and a task still using it would hang.
    wait(futures)
    results = []
    for future, args in zip(futures, calls, strict=True):
        result, cached = TaskResult.model_validate(future.result()), future.state.name == "Cached"
        if result.file_missing():
            again = stage_task.with_options(refresh_cache=True)(*args)
            result, cached = TaskResult.model_validate(again), False
        results.append((result, cached))
    give_back()  # what the stage's tasks freed, before the next stage allocates
    return tally.add(stage_task.name, started, results, categories)


def run_stages(config_path: str, cats: list[str], fps: dict[str, dict[str, str]], name: str,
               base: str | None, carry: list[str], carried_fps: list[str], started_at: str) -> dict:
    """generate (-> embed) -> dedup -> jury -> export for the categories being (re)built.
    `fps`: per category, the fingerprint of each stage's inputs."""
    stats = StageTally()
    out = str(load_config(config_path).outputs_dir)
    generating = submit(generate_task, [(config_path, out, c, fps[c]["generate"]) for c in cats], cats)
    # each category's embedding starts as soon as its generate task returns
    model = load_config(config_path).embedding_identity()
    embedding = submit(embed_task, [(config_path, out, c, content_id([fps[c]["generate"], model]), f)
                                    for c, f in zip(cats, generating.futures, strict=True)], cats)
    try:
        generated = collect(stats, generating)
    finally:
        wait(embedding.futures)  # no embed task outlives the gateway, even if generate failed
    collect(stats, embedding)
    key = dedup_key(generated, fps[cats[0]]["dedup"], carried_fps) if cats else content_id(carried_fps)
    [deduped] = collect(stats, submit(dedup_task, [(config_path, out, cats, generated, key, base, carry)]))
    judged = collect(stats, submit(jury_task, [(config_path, out, c, deduped, fps[c]["jury"]) for c in cats],
                                   cats))
    started = time.monotonic()
    result = export_task(config_path, cats, generated, deduped, judged, name, base, carry, started_at)
    stats.record("export", started, tasks=1)
    tasks = [s for k, s in stats.stages.items() if k != "export"]
    summary = summary_rows(stats.counts["generate"], stats.counts["dedup"], stats.counts["jury"], cats)
    return {**result, "summary": summary, "model_calls": stats.total("model_calls"),
            "cache_hits": stats.total("cache_hits"), "stages": stats.stages,
            "calls_by_category": dict(stats.calls_by_category),
            "stage_tasks": sum(s.tasks for s in tasks),
            "stage_tasks_cached": sum(s.tasks_cached for s in tasks)}


@flow(name=FLOW_NAME, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def build_benchmark(config_path: str, categories: list[str] | None = None,
                    name: str | None = None, base: str | None = None) -> BuildResult:
    """seeds -> generate -> dedup -> jury -> sample -> export, on one config.

    With `base` (a snapshot directory), only the categories named in `categories`,
    or else those whose fingerprint changed, are rebuilt; the rest are carried over.
    With `task_runner: dask` in the config, the stages run as a subflow on Dask.
    """
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    inputs = load_inputs(load_config(config_path), categories)
    cfg = inputs.config
    name = check_snapshot_name(cfg.outputs_dir, name or default_snapshot_name())
    remove_stale_temp_dirs(cfg.outputs_dir)
    base_snap = open_verified(Path(base), "build on", "--base") if base else None
    cache = RequestCache.open(cfg)  # an unreachable cache.url stops here: exit 2, no call made
    try:
        plan = plan_rebuild(inputs, base_snap, named=bool(categories), cache=cache)
        epoch = cache.epoch()  # evictions re-run every stage task (their calls come from the cache)
    finally:
        cache.close()
    for cat, why in plan.reasons.items():
        get_run_logger().info("%s: %s", cat, why)
        note(f"{cat}: {why}")
    fps = {c: stage_keys(inputs, c, epoch) for c in plan.rebuild}
    carried_fps = [base_snap.manifest.fingerprints[c] for c in plan.carry] if base_snap else []
    args = (config_path, plan.rebuild, fps, name, str(base_snap.path) if base_snap else None,
            plan.carry, carried_fps, started_at)
    # each stage task reads what it needs itself (the seed files stay parsed: load_seed_file)
    del inputs
    give_back()  # the pages the checks above freed (runtime/memory.py)
    try:
        result = run_on(cfg.task_runner, run_stages, f"{FLOW_NAME}-stages", *args)
    finally:
        close_gateways()
    return BuildResult.model_validate({**result, "plan": plan.reasons, "task_runner": cfg.task_runner.name})
