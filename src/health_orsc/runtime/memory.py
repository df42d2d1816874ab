"""The process's allocator: fewer malloc arenas for a build's many threads.

glibc gives each thread that allocates its own arena (up to 8 per core), and an arena
keeps what was freed in it: a build's stage tasks run on 16 threads, and at 100,000
candidates the arenas held a few hundred MB that no stage was using (bench/README.md,
"Beyond paper scale": peak RSS 1,473 MB; 1,384 MB with this cap set as the flow started;
1,265 MB with MALLOC_ARENA_MAX=2 in the environment, which also covers the threads that
started before; none slower). `limit_arenas` caps the arenas made from then on, so the
build flow's module calls it as it is imported, before Prefect's threads start; a
MALLOC_ARENA_MAX in the environment is left to rule, and nothing happens where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas`; whether the cap was set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
