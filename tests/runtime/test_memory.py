"""runtime/memory.py: the build caps glibc's malloc arenas unless the environment does."""

from __future__ import annotations

import platform

import pytest

from health_orsc.runtime.memory import give_back, limit_arenas
from tests.conftest import status_mb


def test_a_malloc_arena_max_in_the_environment_is_left_to_rule(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_arenas() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's arena cap is glibc's")
def test_glibc_takes_the_cap(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_arenas() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_pages_in_the_middle_of_the_heap_go_back_to_the_kernel():
    """Blocks freed between blocks still held stay resident until `give_back`: what a
    build's start-up checks leave behind under the stages' working memory."""
    blocks = [bytes(2000) for _ in range(100_000)]  # ~200 MB of malloc'd blocks
    kept = blocks[::50]  # one in fifty stays: the heap cannot shrink from its top
    del blocks
    before = status_mb("RssAnon")
    assert give_back() is True
    assert before - status_mb("RssAnon") > 100
    assert len(kept) == 2000
