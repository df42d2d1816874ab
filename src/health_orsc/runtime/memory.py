"""The process's allocator: fewer malloc arenas for a build's many threads, and the free
pages they hold handed back between stages.

glibc gives each thread that allocates its own arena (up to 8 per core), and an arena
keeps what was freed in it: a build's stage tasks run on 16 threads, and at 100,000
candidates the arenas held a few hundred MB that no stage was using (bench/README.md,
"Beyond paper scale": peak RSS 1,473 MB; 1,384 MB with this cap set as the flow started;
1,265 MB with MALLOC_ARENA_MAX=2 in the environment, which also covers the threads that
started before; none slower). `limit_arenas` caps the arenas made from then on, so the
build flow's module calls it as it is imported, before Prefect's threads start; a
MALLOC_ARENA_MAX in the environment is left to rule, and nothing happens where the C
library is not glibc.

An arena also keeps the pages of what was freed in its middle: in a million-candidate
build the arenas held 832 MB with 627 MB of it free during generate, 1,185 MB with 1,068
MB free during the jury (glibc's mallinfo2, read from the running build).
`give_back` (malloc_trim) returns such pages to the kernel; the build flow calls it after
its start-up checks and after each stage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def _glibc(name: str):
    """A glibc function, or None where the C library is not glibc (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas`; whether the cap was set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _glibc("mallopt")
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


def give_back() -> bool:
    """Return the free pages of every malloc arena to the kernel (glibc's malloc_trim(0));
    whether any were returned. ~0.1 s per GB free; nothing where the C library is not glibc."""
    trim = _glibc("malloc_trim")
    return trim is not None and bool(trim(0))
