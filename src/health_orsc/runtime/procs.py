"""Processes a build starts - the embedded llama.cpp server, Prefect's temporary API
server - are recorded under outputs/run/ while they live. A build killed outright
(SIGKILL leaves it no chance to clean up) leaves its records behind, and the next build
stops what they name: only when the build that started the process is gone, and only
if the process is still the one it started (same PID and start time).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
from pathlib import Path

import psutil

STOP_WAIT_S = 10.0


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
    """Note that this process started `pid`; forget_child() when it is stopped."""
    path = run_dir(outputs_dir) / f"{kind}-{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = os.getpid()
    path.write_text(json.dumps({"kind": kind, "pid": pid, "started": _identity(pid),
                                "owner": owner, "owner_started": _identity(owner)}))
    return path


def forget_child(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def stop_process(pid: int, started: float | None) -> bool:
    """SIGTERM, then SIGKILL, a process - if it is still the one that started at `started`."""
    if started is None or _identity(pid) != started:
        return False
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_WAIT_S)
    except psutil.NoSuchProcess:
        pass
    return True


def reap_orphans(outputs_dir: Path) -> list[str]:
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
        if stop_process(rec["pid"], rec["started"]):
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
