"""A task's Prefect progress artifact ends at its last value: a periodic update sent while the
task finishes cannot land after the final one. (A narrow unit test: Prefect's update call is
replaced by a slow recorder, to make the race happen every time.)"""

from __future__ import annotations

import threading
import time

import prefect.artifacts

from health_orsc.runtime.progress import ProgressBoard, TaskProgress


def test_a_tick_update_in_flight_does_not_land_after_the_last_one(monkeypatch):
    landed: list[float] = []

    def slow_update(artifact_id, progress, description=None):
        time.sleep(0.3 if progress < 100 else 0.0)  # the tick's request is slow to arrive
        landed.append(progress)

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", slow_update)
    board = ProgressBoard()
    entry = TaskProgress("jury", "self_harm", "calls")
    entry.expect(10)
    entry.advance(5)
    board.watch_artifact(entry, "artifact-id")
    tick = threading.Thread(target=board.push_artifact, args=(id(entry),))
    tick.start()
    time.sleep(0.05)  # the tick has read 50% and is sending it
    entry.advance(5)
    entry.finish()
    board.push_artifact(id(entry), last=True)
    tick.join()
    assert landed == [50.0, 100.0]
    board.push_artifact(id(entry))  # no longer watched: nothing more is sent
    assert landed == [50.0, 100.0]
