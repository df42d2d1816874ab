"""`orsc cache migrate SRC DST`: copy the request cache and the embedding cache between
backends (an outputs directory's SQLite files, a PostgreSQL database), page by page.

A row already in DST is kept, so a migration can be re-run, or run into a database other
builds are writing to. Evictions come along, and DST's eviction epoch becomes the larger
of the two, so no stage result cached under an older epoch is trusted.

Example:
    report = migrate(CacheLocation.parse("outputs"), CacheLocation.parse("postgresql://orsc@db/orsc"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from health_orsc.cache.database import cache_exists
from health_orsc.cache.embeddings import EmbeddingCache
from health_orsc.cache.requests import RequestCache
from health_orsc.core.config import CacheConfig, check_cache
from health_orsc.core.errors import InputError

PAGE = 2000


@dataclass(frozen=True)
class CacheLocation:
    """Where caches live: a PostgreSQL URL, or an outputs directory (its cache/*.sqlite)."""

    cache: CacheConfig
    outputs_dir: Path
    label: str

    @classmethod
    def parse(cls, where: str, field: str, password_env: str | None = None) -> CacheLocation:
        if where.startswith(("postgresql://", "postgres://")):
            cache = CacheConfig(url=where, password_env=password_env)
            check_cache(cache, None, field)
            return cls(cache, Path("."), where)
        path = Path(where)
        if path.name == "cache" and not (path / "cache").exists():
            path = path.parent  # the cache directory itself, not its outputs directory
        return cls(CacheConfig(), path, str(path))

    def has(self, name: str) -> bool:
        return cache_exists(self.cache, self.outputs_dir, name)

    def same_as(self, other: CacheLocation) -> bool:
        if self.cache.url or other.cache.url:
            return self.cache.url == other.cache.url
        return self.outputs_dir.resolve() == other.outputs_dir.resolve()


class MigrationReport(BaseModel):
    """What `orsc cache migrate` copied (and `--json` prints)."""

    src: str = ""
    dst: str = ""
    seconds: float = 0.0
    calls: int = 0
    calls_new: int = 0
    evictions: int = 0
    vectors: int = 0
    vectors_new: int = 0
    epoch: int = 0


def migrate(src: CacheLocation, dst: CacheLocation) -> MigrationReport:
    if src.same_as(dst):
        raise InputError(None, "DST", f"is the same cache as SRC ({src.label})",
                         "name another cache to copy into")
    if not (src.has("llm") or src.has("embeddings")):
        raise InputError(src.label, "SRC", "holds no cache (no cache/llm.sqlite or cache/embeddings.sqlite)",
                         "pass the outputs directory of a build, or a postgresql:// URL")
    report = MigrationReport()
    if src.has("llm"):
        _copy_calls(src, dst, report)
    if src.has("embeddings"):
        _copy_vectors(src, dst, report)
    return report


def _copy_pages(read: Callable[[str, int], list[tuple]],
                write: Callable[[list[tuple]], int]) -> tuple[int, int]:
    """Rows keyed by their first field, PAGE at a time in key order: (rows read, rows new)."""
    read_n = new = 0
    after = ""
    while rows := read(after, PAGE):
        read_n += len(rows)
        new += write(rows)
        after = rows[-1][0]
    return read_n, new


def _copy_calls(src: CacheLocation, dst: CacheLocation, report: MigrationReport) -> None:
    source = RequestCache.at(src.cache, src.outputs_dir, readonly=True)
    target = RequestCache.at(dst.cache, dst.outputs_dir)
    try:
        report.calls, report.calls_new = _copy_pages(source.rows, target.put_rows)
        evictions = source.db.query("SELECT key, evicted_at FROM evictions ORDER BY key")
        report.evictions = len(evictions)
        report.epoch = max(source.epoch(), target.epoch())
        target.db.write(("INSERT INTO evictions VALUES (?, ?) ON CONFLICT (key) DO NOTHING", evictions, True),
                        ("INSERT INTO meta VALUES ('epoch', ?) ON CONFLICT (name) DO UPDATE SET value = ?",
                         (report.epoch, report.epoch), False))
    finally:
        source.close()
        target.close()


def _copy_vectors(src: CacheLocation, dst: CacheLocation, report: MigrationReport) -> None:
    source = EmbeddingCache.at(src.cache, src.outputs_dir, readonly=True)
    target = EmbeddingCache.at(dst.cache, dst.outputs_dir)
    try:
        report.vectors, report.vectors_new = _copy_pages(source.rows, target.put_many)
    finally:
        source.close()
        target.close()
