"""Processes a build starts - the embedded llama.cpp server, Prefect's temporary API
server - are recorded under outputs/run/ while they live. A build killed outright
(SIGKILL leaves it no chance to clean up) leaves its records behind. A watchdog process,
started with the first record, notices within a fraction of a second and stops what they
name; should the watchdog be gone too, the next build does. Either stops a process only
when the build that started it is gone, and only if the process is still the one it
started (same PID and start time).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

STOP_WAIT_S = 10.0
WATCH_INTERVAL_S = 0.2     # how often the watchdog looks at its build
WATCHDOG_STOP_WAIT_S = 1.0  # a killed build's children get this long to exit on SIGTERM


def run_dir(outputs_dir: Path) -> Path:
    return outputs_dir / "run"


def _identity(pid: int) -> float | None:
    """A process's start time: with its PID, what tells it apart from a later process that
    reuses the PID. None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def record_child(outputs_dir: Path, kind: str, pid: int) -> Path:
    """Note that this process started `pid`; forget_child() when it is stopped. The first
    record in an outputs dir starts this process's watchdog there."""
    path = run_dir(outputs_dir) / f"{kind}-{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = os.getpid()
    path.write_text(json.dumps({"kind": kind, "pid": pid, "started": _identity(pid),
                                "owner": owner, "owner_started": _identity(owner)}))
    _start_watchdog(outputs_dir)
    return path


_watchdogs: dict[Path, subprocess.Popen] = {}


def _start_watchdog(outputs_dir: Path) -> None:
    """One watchdog per outputs dir per process: `python -m health_orsc.runtime.watchdog`,
    in a session of its own so a signal to the build's process group does not reach it."""
    key = outputs_dir.resolve()
    if key in _watchdogs and _watchdogs[key].poll() is None:
        return
    owner = os.getpid()
    _watchdogs[key] = subprocess.Popen(
        [sys.executable, "-m", "health_orsc.runtime.watchdog", str(owner), repr(_identity(owner)), str(key)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


def watch(owner: int, owner_started: float, outputs_dir: Path) -> list[str]:
    """Wait until the process `owner` is gone, then stop the children it recorded (and any
    other dead build's). Returns what was stopped."""
    while _identity(owner) == owner_started:
        time.sleep(WATCH_INTERVAL_S)
    return reap_orphans(outputs_dir, WATCHDOG_STOP_WAIT_S)


def forget_child(path: Path | None) -> None:
    """The child at `path` was stopped; with no other child recorded by this process in
    that outputs dir, its watchdog is stopped too."""
    if path is None:
        return
    path.unlink(missing_ok=True)
    owner = os.getpid()
    for other in path.parent.glob("*.json"):
        try:
            if json.loads(other.read_text())["owner"] == owner:
                return
        except (OSError, ValueError, KeyError, TypeError):
            continue
    watchdog = _watchdogs.pop(path.parent.parent.resolve(), None)
    if watchdog is not None:
        watchdog.terminate()
        watchdog.wait()


def stop_process(pid: int, started: float | None, wait_s: float = STOP_WAIT_S) -> bool:
    """SIGTERM, then SIGKILL after `wait_s`, a process - if it is still the one that
    started at `started`."""
    if started is None or _identity(pid) != started:
        return False
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        if not _ended(proc, wait_s):
            proc.kill()
            _ended(proc, STOP_WAIT_S)
    except psutil.NoSuchProcess:
        pass
    return True


def _ended(proc: psutil.Process, timeout: float) -> bool:
    """Whether `proc` ends within `timeout`. A zombie has ended: the process that reaps it
    may not be ours (a killed build's children are reaped by init, in its own time), so
    psutil's wait, which waits for the PID to vanish, could wait for init instead."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def reap_orphans(outputs_dir: Path, wait_s: float = STOP_WAIT_S) -> list[str]:
    """Stop the recorded children of builds that are gone; returns what was stopped."""
    stopped = []
    for path in sorted(run_dir(outputs_dir).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            owner_alive = _identity(rec["owner"]) == rec["owner_started"] and rec["owner_started"]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if owner_alive:
            continue  # a build still running (here, or concurrently in the same outputs/)
        if stop_process(rec["pid"], rec["started"], wait_s):
            stopped.append(f"{rec['kind']} (pid {rec['pid']})")
        path.unlink(missing_ok=True)
    return stopped


_recorded_prefect_server: Path | None = None


def start_prefect_server(outputs_dir: Path) -> None:
    """For an in-process build with no PREFECT_API_URL: start Prefect's temporary API
    server now (Prefect would start the same one at its first call) and record it, so a
    killed build's server is stopped by the next build. It stops when this process exits."""
    global _recorded_prefect_server
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # Prefect's own singleton: its clients use this one
    server.start()
    if _recorded_prefect_server is None and server.server_process is not None:
        _recorded_prefect_server = record_child(outputs_dir, "prefect-server", server.server_process.pid)
        # registered after Prefect's own atexit stop, so it runs first: a clean exit leaves
        # no record (a SIGKILL leaves one for the next build) and no "Stopping" log line
        atexit.register(_before_prefect_stops, _recorded_prefect_server)


def _before_prefect_stops(record: Path) -> None:
    logging.getLogger("prefect").setLevel(logging.WARNING)
    forget_child(record)


@contextmanager
def prefect_api_for_workers() -> Iterator[str]:
    """Yields the Prefect API's URL: the user's PREFECT_API_URL, or this process's temporary
    server's, set as PREFECT_API_URL within, so that task runs sent to other processes on
    this host (Dask workers) report to it. A worker process given no URL starts a temporary
    server of its own (about 10 s each on 2 cores), and two processes that pick the same
    port can share one server, whose owner's exit then fails the other's task runs with
    "Connection refused" (seen in tests/flows). The workers' own threads (logs, events)
    read their environment, so workers need PREFECT_API_URL there too."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # Prefect's own singleton, as in start_prefect_server
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield server.api_url
