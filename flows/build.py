"""The `build-benchmark` Prefect flow: wiring only; the logic lives in pipeline/.

Tasks are (stage x category), never one prompt. Each task takes the config path
and a fingerprint of what shapes its output, writes its records to a
content-addressed file under outputs/stages/ and returns that path. The cache
policy is INPUTS + TASK_SOURCE (no RUN_ID), so a task whose inputs and code are
unchanged comes back from Prefect's cache in the next run too (results are
persisted under PREFECT_LOCAL_STORAGE_PATH; `orsc build` puts it under outputs/).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from pipeline import __version__
from pipeline.config import BuildConfig, load_config
from pipeline.dedup import Embedder, dedup_candidates
from pipeline.export import write_snapshot
from pipeline.fingerprint import category_fingerprint
from pipeline.generate import generate_category
from pipeline.inputs import BuildInputs, load_inputs
from pipeline.jury import judge_category
from pipeline.llm import Gateway
from pipeline.records import Decision, content_id, read_jsonl, write_jsonl
from pipeline.sample import stratified_sample
from pipeline.store import snapshots_dir, stage_path

FLOW_NAME = "build-benchmark"

_gateways: dict[str, Gateway] = {}
_gateways_lock = threading.Lock()


def gateway_for(config: BuildConfig) -> Gateway:
    """One gateway per config per process, shared by every task thread."""
    key = str(config.source)
    with _gateways_lock:
        if key not in _gateways:
            _gateways[key] = Gateway(config)
        return _gateways[key]


def close_gateways() -> dict[str, dict[str, int]]:
    """Stop embedded servers, close clients; return calls and cache hits per role."""
    stats: dict[str, dict[str, int]] = {"calls": {}, "cache_hits": {}}
    with _gateways_lock:
        for gw in _gateways.values():
            for role, n in gw.calls.items():
                stats["calls"][role] = stats["calls"].get(role, 0) + n
            for role, n in gw.cache_hits.items():
                stats["cache_hits"][role] = stats["cache_hits"].get(role, 0) + n
            gw.close()
        _gateways.clear()
    return stats


def _inputs(config_path: str, categories: list[str]) -> BuildInputs:
    return load_inputs(load_config(config_path), categories)


@task(name="generate", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def generate_task(config_path: str, category: str, fingerprint: str) -> str:
    inputs = _inputs(config_path, [category])
    out = stage_path(inputs.config.outputs_dir, "generate", f"{category}-{fingerprint}")
    decisions = gateway_for(inputs.config).run(
        generate_category(inputs, category, gateway_for(inputs.config)))
    write_jsonl(out, decisions)
    get_run_logger().info("generate %s: %d candidates (%d empty rewrites rejected)", category,
                          len(decisions), sum(not d.kept for d in decisions))
    return str(out)


@task(name="dedup", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def dedup_task(config_path: str, generated: list[str], key: str) -> str:
    config = load_config(config_path)
    candidates = [d.candidate for p in generated for d in read_jsonl(Path(p), Decision) if d.kept]
    decisions = dedup_candidates(candidates, config.dedup,
                                 Embedder(config.dedup.model_path, config.dedup.batch_size))
    out = stage_path(config.outputs_dir, "dedup", key)
    write_jsonl(out, decisions)
    get_run_logger().info("dedup: %d candidates, %d near-duplicates dropped (threshold %.2f)",
                          len(decisions), sum(not d.kept for d in decisions), config.dedup.threshold)
    return str(out)


@task(name="jury", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def jury_task(config_path: str, category: str, deduped: str, fingerprint: str) -> str:
    inputs = _inputs(config_path, [category])
    candidates = [d.candidate for d in read_jsonl(Path(deduped), Decision)
                  if d.kept and d.candidate.category == category]
    gw = gateway_for(inputs.config)
    decisions = gw.run(judge_category(inputs, category, candidates, gw))
    out = stage_path(inputs.config.outputs_dir, "jury",
                     f"{category}-{content_id([Path(deduped).stem, fingerprint])}")
    write_jsonl(out, decisions)
    reasons = [d.reason for d in decisions if not d.kept]
    get_run_logger().info("jury %s: %d kept, %d judged harmful, %d unparseable", category,
                          len(decisions) - len(reasons), reasons.count("jury_harmful"),
                          reasons.count("unparseable_verdict"))
    return str(out)


@task(name="export")
def export_task(config_path: str, categories: list[str], generated: list[str], deduped: str,
                judged: list[str], fingerprints: dict[str, str], name: str) -> dict:
    inputs = _inputs(config_path, categories)
    cfg = inputs.config
    gen_decisions = [d for p in generated for d in read_jsonl(Path(p), Decision)]
    dedup_decisions = read_jsonl(Path(deduped), Decision)
    jury_decisions = [d for p in judged for d in read_jsonl(Path(p), Decision)]
    kept = [d for d in jury_decisions if d.kept]
    rejected = ([d for d in gen_decisions if not d.kept] + [d for d in dedup_decisions if not d.kept]
                + [d for d in jury_decisions if not d.kept])
    sample = stratified_sample(kept, cfg.sample)
    roles = [cfg.generation.role, *cfg.jury.jurors]
    meta = {
        "categories": categories,
        "fingerprints": fingerprints,
        "models": {r: {"endpoint": cfg.endpoint_for(r).identity, "model": cfg.roles[r].model,
                       "sampling": cfg.roles[r].sampling(), "prompt": cfg.roles[r].prompt}
                   for r in roles},
        "config": cfg.model_dump(mode="json", exclude={"seeds_dir", "templates_dir", "outputs_dir"}),
        "taxonomy_version": inputs.taxonomy.version,
        "jury": {"jurors": cfg.jury.jurors, "required_benign": cfg.jury.required_benign,
                 "models": sorted({cfg.roles[j].identity(cfg.endpoint_for(j)) for j in cfg.jury.jurors})},
        "license": cfg.snapshot.license,
        "pretty_name": cfg.snapshot.pretty_name,
        "package_version": __version__,
        "rewrites": cfg.generation.rewrites,
        "generator": cfg.roles[cfg.generation.role].identity(cfg.endpoint_for(cfg.generation.role)),
        "dedup_threshold": cfg.dedup.threshold,
    }
    path = write_snapshot(cfg.outputs_dir, name, kept, rejected, sample, meta)
    get_run_logger().info("export: %d prompts, %d rejected -> %s", len(kept), len(rejected), path)
    return {"snapshot": str(path), "summary": stage_summary(gen_decisions, dedup_decisions,
                                                            jury_decisions)}


def stage_summary(generated: list[Decision], deduped: list[Decision],
                  judged: list[Decision]) -> list[dict]:
    """Rows of category x level: generated / after dedup / after jury."""
    rows: dict[tuple[str, str], dict] = {}
    for stage, decisions, kept_only in (("generated", generated, False),
                                        ("after_dedup", deduped, True),
                                        ("after_jury", judged, True)):
        for d in decisions:
            key = (d.candidate.category, d.candidate.level)
            row = rows.setdefault(key, {"category": key[0], "level": key[1], "generated": 0,
                                        "after_dedup": 0, "after_jury": 0})
            if d.kept or not kept_only:
                row[stage] += 1
    return list(rows.values())


def default_snapshot_name() -> str:
    return datetime.now(UTC).strftime("build-%Y%m%d-%H%M%S")


@flow(name=FLOW_NAME, log_prints=True)
def build_benchmark(config_path: str, categories: list[str] | None = None,
                    name: str | None = None) -> dict:
    """seeds -> generate -> dedup -> jury -> sample -> export, on one config."""
    inputs = load_inputs(load_config(config_path), categories)
    cfg = inputs.config
    name = name or default_snapshot_name()
    if (snapshots_dir(cfg.outputs_dir) / name).exists():
        raise FileExistsError(f"snapshot '{name}' already exists; pass a new name")
    cats = inputs.categories
    fps = {c: category_fingerprint(inputs, c) for c in cats}
    try:
        gen_futures = [generate_task.submit(config_path, c, fps[c]) for c in cats]
        generated = [f.result() for f in gen_futures]
        dedup_key = content_id([Path(p).stem for p in generated]
                               + [cfg.dedup.model_dump(exclude={"batch_size"})])
        deduped = dedup_task(config_path, generated, dedup_key)
        jury_futures = [jury_task.submit(config_path, c, deduped, fps[c]) for c in cats]
        judged = [f.result() for f in jury_futures]
        result = export_task(config_path, cats, generated, deduped, judged, fps, name)
    finally:
        stats = close_gateways()
    return {**result, "model_calls": stats["calls"], "cache_hits": stats["cache_hits"]}
