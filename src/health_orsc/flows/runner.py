"""Where a flow's tasks run: Prefect's thread runner in the flow's process, or a Dask
cluster (`task_runner: dask` in the config), for the build and the evaluation alike."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from health_orsc.core.config import TaskRunnerConfig


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


def run_on(runner: TaskRunnerConfig, fn, subflow: str, *args):
    """`fn(*args)`, which submits tasks: in the calling flow (the thread runner), or as a
    subflow named `subflow` on the configured task runner (Dask)."""
    if runner.name == "thread":
        return fn(*args)
    return flow(fn, name=subflow, log_prints=True, task_runner=task_runner_for(runner))(*args)
