"""The `evaluate-benchmark` Prefect flow: wiring only; the logic lives in
health_orsc/evaluation/stages.py (answers, grades, the run's files).

The flow reads the snapshot's prompts once and writes each category's items to a stage
file, submitting that category's tasks as soon as it is written. Tasks are (model x
category); with `task_runner: dask` in the config they run as a subflow on Dask, as the
build's stages do. Each answers and grades its prompts through the process's shared
gateway, so every call is in the request cache: a run killed half-way resumes from it, and
adding a model to the panel calls only that model and the grader for its answers.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from health_orsc.audit.verify import open_verified
from health_orsc.core.config import load_config
from health_orsc.evaluation.answer import EvalInputs, load_evaluation
from health_orsc.evaluation.report import leaderboard_markdown
from health_orsc.evaluation.stages import EvaluationResult, answer_stage, write_items, write_run
from health_orsc.flows.runner import run_on
from health_orsc.llm import Usage, close_gateways, gateway_for
from health_orsc.llm.accounting import StageTally, TaskResult
from health_orsc.runtime.progress import tracked
from health_orsc.snapshot.handle import Snapshot
from health_orsc.snapshot.store import check_snapshot_name, evaluations_dir

FLOW_NAME = "evaluate-benchmark"


def _inputs(config_path: str, snapshot: str, models: list[str]) -> EvalInputs:
    """A task's inputs: the flow checked every input; the items carry their rubrics (write_items)."""
    config = load_config(config_path)
    return load_evaluation(config, Snapshot.open(Path(snapshot)), models, count_rubrics=False)


@task(name="evaluate")
def evaluate_task(config_path: str, snapshot: str, models: list[str], model: str, category: str,
                  items_path: str, run: str, planned: int) -> TaskResult:
    inputs = _inputs(config_path, snapshot, models)
    with tracked("evaluate", f"{model} {category}") as progress:
        usage = Usage(progress=progress)
        out, n = answer_stage(inputs, model, category, Path(items_path), run, gateway_for(inputs.config),
                              usage, planned)
    get_run_logger().info("%s %s: %d answers graded", model, category, n)
    return TaskResult.of(out, usage=usage)


def run_tasks(config_path: str, snapshot: str, models: list[str], run: str) -> list[TaskResult]:
    """One evaluate task per (model x category), a category's submitted as soon as its
    items are written (the first calls go out while the rest are written); their results,
    by model, then category."""
    futures = {}
    try:
        for cat, items, planned in write_items(_inputs(config_path, snapshot, models), run):
            for m in models:
                futures[m, cat] = evaluate_task.submit(config_path, snapshot, models, m, cat, str(items), run,
                                                       planned)
    finally:  # every task ends before a failure is raised: they share the gateway
        wait(list(futures.values()))
    return [futures[key].result() for key in sorted(futures, key=lambda k: models.index(k[0]))]


@flow(name=FLOW_NAME, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def evaluate_benchmark(config_path: str, snapshot: str, models: list[str] | None = None,
                       name: str | None = None) -> EvaluationResult:
    """A panel of models answers a snapshot's prompts; the grader grades every answer; the
    run's metrics, leaderboard and per-prompt difficulty go to outputs/evaluations/<name>/."""
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    config = load_config(config_path)
    base = open_verified(Path(snapshot), "evaluate")
    inputs = load_evaluation(config, base, models)
    name = check_snapshot_name(config.outputs_dir, name or datetime.now(UTC).strftime("eval-%Y%m%d-%H%M%S"),
                               evaluations_dir(config.outputs_dir))
    started = time.monotonic()
    args = (config_path, str(base.path), inputs.models, name)
    try:
        results = run_on(config.task_runner, run_tasks, f"{FLOW_NAME}-tasks", *args)
    finally:
        close_gateways()
    tally = StageTally()
    paths = tally.add("evaluate", started, [(r, False) for r in results])
    ended = time.monotonic()
    path, metrics = write_run(inputs, name, [Path(p) for p in paths], started_at)
    create_markdown_artifact(markdown=leaderboard_markdown(metrics["leaderboard"]), key="leaderboard",
                             description=f"evaluation {name} of snapshot {base.path.name}")
    tally.record("write", ended, tasks=1)
    return EvaluationResult(run=str(path), leaderboard=metrics["leaderboard"],
                            model_calls=tally.total("model_calls"), cache_hits=tally.total("cache_hits"),
                            tasks=len(results), stages=tally.stages)
