"""A child process that ends with its parent: the initializer of a process pool whose
process must not outlive a build killed outright (kill -9 leaves the build no time to stop
it).

The watch starts before anything else is imported: this module needs the standard library
only, and what the child goes on to import (numpy, faiss, the openai client: seconds on a
busy machine) comes after, so a build killed while its child is still starting takes the
child with it too.

Example:
    ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), start_child,
                        (os.getpid(), "health_orsc.build.alongside:_start_in_process", pickle.dumps(config)))
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from typing import Any

PARENT_CHECK_S = 0.5  # how often the child looks for its parent


def start_child(parent: int, start: str, *args: Any) -> None:
    """Watch `parent` (a pid), then import and call `start` ("module:function") with `args`."""
    threading.Thread(target=_end_with, args=(parent,), name="end-with-parent", daemon=True).start()
    module, name = start.split(":")
    getattr(importlib.import_module(module), name)(*args)


def _end_with(parent: int) -> None:
    """End this process within PARENT_CHECK_S of its parent's end."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)
