"""The `evaluate-benchmark` Prefect flow: wiring only; the logic lives in pipeline/evaluate.py
(answers and grades) and pipeline/scores.py (metrics and the run's files).

The flow reads the snapshot's prompts once and writes each category's items to a stage
file. Tasks are (model x category); with `task_runner: dask` in the config they run as a
subflow on Dask, as the build's stages do. Each answers and grades its prompts through the process's
shared gateway, so every call is in the request cache: a run killed half-way resumes from
it, and adding a model to the panel calls only that model and the grader for its answers.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.build import close_gateways, gateway_for, run_on
from pipeline.base import open_base
from pipeline.config import load_config
from pipeline.evaluate import EvalItem, Response, answer_category, eval_items, load_evaluation, planned_calls
from pipeline.llm import Usage
from pipeline.progress import note, tracked
from pipeline.records import content_id, read_jsonl, write_jsonl
from pipeline.scores import (
    difficulty,
    evaluation_metrics,
    leaderboard_markdown,
    snapshot_ref,
    write_evaluation,
)
from pipeline.store import check_snapshot_name, evaluations_dir, stage_path

FLOW_NAME = "evaluate-benchmark"


@task(name="evaluate")
def evaluate_task(config_path: str, snapshot: str, models: list[str], model: str, category: str,
                  items_path: str, run: str) -> dict:
    config = load_config(config_path)
    inputs = load_evaluation(config, open_base(Path(snapshot), verify=False), models)
    items = read_jsonl(Path(items_path), EvalItem)
    gateway = gateway_for(config)
    with tracked("evaluate", f"{model} {category}") as progress:
        usage = Usage(progress=progress)
        usage.expect(planned_calls(items))
        responses = gateway.run(answer_category(inputs, model, category, items, gateway), usage)
    out = stage_path(config.outputs_dir, "evaluate", f"{run}-{content_id([model, category])}")
    write_jsonl(out, responses)
    get_run_logger().info("%s %s: %d answers graded", model, category, len(responses))
    return {"path": str(out), **usage.as_dict()}


def run_tasks(config_path: str, snapshot: str, models: list[str], cats: list[str], items: dict[str, str],
              run: str) -> list[dict]:
    """One evaluate task per (model x category); their results."""
    futures = [evaluate_task.submit(config_path, snapshot, models, m, c, items[c], run)
               for m in models for c in cats]
    wait(futures)  # every task ends before one's failure is raised: they share the gateway
    return [f.result() for f in futures]


@flow(name=FLOW_NAME, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def evaluate_benchmark(config_path: str, snapshot: str, models: list[str] | None = None,
                       name: str | None = None) -> dict:
    """A panel of models answers a snapshot's prompts; the grader grades every answer; the
    run's metrics, leaderboard and per-prompt difficulty go to outputs/evaluations/<name>/."""
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    config = load_config(config_path)
    base = open_base(Path(snapshot))
    inputs = load_evaluation(config, base, models)
    name = check_snapshot_name(config.outputs_dir, name or datetime.now(UTC).strftime("eval-%Y%m%d-%H%M%S"),
                               evaluations_dir(config.outputs_dir))
    cats = base.manifest.categories
    started = time.monotonic()
    # the snapshot is read once; each task reads its category's items from a stage file
    items = {}
    for cat, cat_items in eval_items(base.path, cats, config).items():
        items[cat] = stage_path(config.outputs_dir, "evaluate", f"{name}-items-{content_id([cat])}")
        write_jsonl(items[cat], cat_items)
    args = (config_path, str(base.path), inputs.models, cats, {c: str(p) for c, p in items.items()}, name)
    try:
        results = run_on(config.task_runner, run_tasks, f"{FLOW_NAME}-tasks", *args)
    finally:
        close_gateways()
    ended = time.monotonic()
    calls: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for r in results:
        calls.update(r["calls"])
        hits.update(r["cache_hits"])
    note(f"evaluate: finished in {ended - started:.1f} s ({len(results)} tasks,"
         f" {sum(calls.values()):,} model calls)")
    responses = [resp for r in results for resp in read_jsonl(Path(r["path"]), Response)]
    ev = config.evaluation
    rows = difficulty(responses, ev)
    metrics = evaluation_metrics(responses, inputs.models, ev, rows)
    grader = config.roles[ev.grader]
    meta = {"started_at": started_at, "snapshot": snapshot_ref(base.path, base.manifest.digest),
            "models": {m: config.roles[m].identity(config.endpoints[config.roles[m].endpoint])
                       for m in inputs.models},
            "grader": {"role": ev.grader, "model": grader.identity(config.endpoints[grader.endpoint]),
                       "rubric": inputs.grader_template.name, "rubric_sha": inputs.grader_template.sha},
            "evaluation": ev.model_dump(mode="json")}
    path = write_evaluation(config.outputs_dir, name, responses, metrics, rows, meta)
    create_markdown_artifact(markdown=leaderboard_markdown(metrics["leaderboard"]), key="leaderboard",
                             description=f"evaluation {name} of snapshot {base.path.name}")
    done = time.monotonic()
    return {"run": str(path), "leaderboard": metrics["leaderboard"], "model_calls": dict(calls),
            "cache_hits": dict(hits), "tasks": len(results),
            # monotonic clock at start and end, to line up with an endpoint's own log (bench/)
            "stages": {"evaluate": {"clock": [started, ended], "wall_s": round(ended - started, 3)},
                       "write": {"clock": [ended, done], "wall_s": round(done - ended, 3)}}}
