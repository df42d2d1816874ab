"""runtime/memory.py: the build caps glibc's malloc arenas unless the environment does."""

from __future__ import annotations

import platform

import pytest

from health_orsc.runtime.memory import limit_arenas


def test_a_malloc_arena_max_in_the_environment_is_left_to_rule(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_arenas() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's arena cap is glibc's")
def test_glibc_takes_the_cap(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_arenas() is True
