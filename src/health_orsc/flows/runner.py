"""Where a flow's tasks run: Prefect's thread runner in the flow's process, or a Dask
cluster (`task_runner: dask` in the config), for the build and the evaluation alike."""

from __future__ import annotations

from contextlib import nullcontext
from urllib.parse import urlparse

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from health_orsc.core.config import TaskRunnerConfig
from health_orsc.runtime.procs import prefect_api_for_workers


def task_runner_for(cfg: TaskRunnerConfig, api_url: str | None = None):
    """`api_url`: the Prefect API the workers of a LocalCluster report to."""
    if cfg.name == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.address:
            return DaskTaskRunner(address=cfg.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.n_workers, "processes": True,
                                              "threads_per_worker": cfg.threads_per_worker,
                                              "dashboard_address": None,
                                              "env": {"PREFECT_API_URL": api_url} if api_url else {}})
    # One thread per (stage x category) task, so no category waits for a free thread.
    return ThreadPoolTaskRunner(max_workers=16)


def run_on(runner: TaskRunnerConfig, fn, subflow: str, *args):
    """`fn(*args)`, which submits tasks: in the calling flow (the thread runner), or as a
    subflow named `subflow` on the configured task runner (Dask)."""
    if runner.name == "thread":
        return fn(*args)
    # workers on this host report to this process's Prefect server; workers elsewhere need
    # PREFECT_API_URL set to a server they can reach (docs/scaling.md)
    local = not runner.address or urlparse(runner.address).hostname in ("127.0.0.1", "localhost", "::1")
    with prefect_api_for_workers() if local else nullcontext() as api_url:
        task_runner = task_runner_for(runner, api_url)
        return flow(fn, name=subflow, log_prints=True, task_runner=task_runner)(*args)
