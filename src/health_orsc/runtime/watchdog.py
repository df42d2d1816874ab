"""`python -m health_orsc.runtime.watchdog OWNER OWNER_STARTED OUTPUTS_DIR`: started by a
build with its first child process (runtime.procs.record_child); once the build is gone,
however it ended, stops the children it recorded under OUTPUTS_DIR/run/ and exits."""

from __future__ import annotations

import sys
from pathlib import Path

from health_orsc.runtime.procs import watch

if __name__ == "__main__":
    owner, started, outputs_dir = sys.argv[1:4]
    watch(int(owner), float(started), Path(outputs_dir))
