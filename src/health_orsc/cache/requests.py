"""Persistent request cache (SQLite, or PostgreSQL with `cache.url`): the raw record of
every model call.

Rows are keyed by ChatRequest.key (health_orsc/llm/request.py). Only replies that are
chat completions are stored; a bad answer that was a valid completion stays until
it is evicted (`orsc cache evict`). An eviction is remembered: the key is listed in
`evictions` until a call with that key is made again, and a counter (the cache's
epoch) goes up, which re-runs every stage task of the next build (their Prefect
cache key includes it) and makes `--base` rebuild any carried category that used
an evicted call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from health_orsc.cache.database import Database, cache_exists, open_database, open_sqlite
from health_orsc.core.config import BuildConfig, CacheConfig
from health_orsc.core.records import canonical_json

_CALLS = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    text TEXT NOT NULL,
    usage TEXT,
    latency_s {real} NOT NULL,
    created_at {real} NOT NULL,
    role TEXT
);
CREATE TABLE IF NOT EXISTS evictions (key TEXT PRIMARY KEY, evicted_at {real} NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
SCHEMA = {"sqlite": _CALLS.format(real="REAL"), "postgres": _CALLS.format(real="DOUBLE PRECISION")}
_FIELDS = "key, endpoint, model, request, response, text, usage, latency_s, created_at, role"
# a key already stored (by this or another process) is left as it is
_INSERT = f"INSERT INTO calls ({_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"


@dataclass(frozen=True)
class CachedCall:
    """One model call as stored: the request as canonical JSON, the reply as the server sent it."""

    key: str
    endpoint: str
    model: str
    request_json: str
    response_json: str
    text: str
    usage: dict[str, Any] | None
    latency_s: float
    role: str | None
    created_at: float = field(default_factory=time.time)


class RequestCache:
    """Thread-safe store of calls: a SQLite file (safe to open from several processes on
    one host, WAL) or the PostgreSQL database of `cache.url` (many hosts)."""

    def __init__(self, db: Database | Path, readonly: bool = False):
        """`db`: an open Database, or the path of a SQLite file. `readonly` opens an
        existing cache without writing to it (audits of a copied or read-only outputs/)."""
        self.db = db if isinstance(db, Database) else open_sqlite(db, SCHEMA["sqlite"], readonly)
        self.path = self.db.where
        self._fields = _FIELDS
        if not self.db.postgres:
            columns = {r[1] for r in self.db.query("PRAGMA table_info(calls)")}
            if "role" not in columns and not readonly:  # a cache written before calls had a role
                self.db.write(("ALTER TABLE calls ADD COLUMN role TEXT", (), False))
                columns.add("role")
            if "role" not in columns:
                self._fields = _FIELDS.replace("role", "NULL")
        self._evictions_pending = not readonly and self.has_evictions()

    @classmethod
    def at(cls, cache: CacheConfig, outputs_dir: Path, source: Path | None = None,
           readonly: bool = False) -> RequestCache:
        """The request cache of a cache setting: outputs_dir/cache/llm.sqlite, or the
        `cache.url` database."""
        return cls(open_database(cache, outputs_dir, "llm", SCHEMA, source, readonly))

    @classmethod
    def open(cls, config: BuildConfig) -> RequestCache:
        """The config's request cache."""
        return cls.at(config.cache, config.outputs_dir, config.source)

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.one(f"SELECT {self._fields} FROM calls WHERE key = ?", (key,))
        if row is None:
            return None
        return {
            "key": row[0], "endpoint": row[1], "model": row[2],
            "request": json.loads(row[3]), "response": json.loads(row[4]), "text": row[5],
            "usage": json.loads(row[6]) if row[6] else None, "latency_s": row[7],
            "created_at": row[8], "role": row[9],
        }

    def text(self, key: str) -> str | None:
        """Only the answer's text (get() parses the whole record)."""
        row = self.db.one("SELECT text FROM calls WHERE key = ?", (key,))
        return row[0] if row else None

    def answers(self, keys: list[str], with_response: bool = False) -> dict[str, tuple[str, str | None]]:
        """Those of `keys` that are stored: key -> (text, the raw reply's JSON if
        `with_response`), in one query per 500 keys (what the gateway needs on a hit)."""
        column = "response" if with_response else "NULL"
        rows = self.db.query_keys(f"SELECT key, text, {column} FROM calls WHERE key IN ({{keys}})", keys)
        return {key: (text, response) for key, text, response in rows}

    def put_many(self, calls: list[CachedCall]) -> None:
        """Store calls in one transaction (one commit: the costly part of a write). A key
        already stored (by this or another process) is left as it is."""
        rows = [(c.key, c.endpoint, c.model, c.request_json, c.response_json, c.text,
                 canonical_json(c.usage) if c.usage else None, c.latency_s, c.created_at, c.role)
                for c in calls]
        statements = [(_INSERT, rows, True)]
        if self._evictions_pending:
            statements.append(("DELETE FROM evictions WHERE key = ?", [(c.key,) for c in calls], True))
        self.db.write(*statements)

    def rows(self, after: str = "", limit: int = 1000) -> list[tuple]:
        """Stored calls as rows of the `calls` table, by key, `limit` after the key `after`."""
        return self.db.query(f"SELECT {self._fields} FROM calls WHERE key > ? ORDER BY key LIMIT ?",
                             (after, limit))

    def put_rows(self, rows: list[tuple]) -> int:
        """Store rows as `rows` returns them (a migration); the number of new ones."""
        [inserted] = self.db.write((_INSERT, rows, True))
        return inserted

    # -- eviction ----------------------------------------------------------------------
    def find(self, *, role: str | None = None, endpoint: str | None = None, model: str | None = None,
             key_prefix: str | None = None) -> list[str]:
        """Keys of stored calls matching every given criterion."""
        where, args = [], []
        for column, value in (("role", role), ("endpoint", endpoint), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if key_prefix is not None:
            where.append("key LIKE ?")
            args.append(key_prefix.replace("%", "").replace("_", "") + "%")
        sql = "SELECT key FROM calls" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY key"
        return [r[0] for r in self.db.query(sql, args)]

    def evict(self, keys: list[str]) -> int:
        """Delete these calls, remember them as evicted, and raise the epoch. Returns the
        number of calls deleted."""
        if not keys:
            return 0
        now = time.time()
        deleted, *_ = self.db.write(
            ("DELETE FROM calls WHERE key = ?", [(k,) for k in keys], True),
            ("INSERT INTO evictions VALUES (?, ?)"
             " ON CONFLICT (key) DO UPDATE SET evicted_at = excluded.evicted_at",
             [(k, now) for k in keys], True),
            ("INSERT INTO meta VALUES ('epoch', 1) ON CONFLICT (name) DO UPDATE SET value = meta.value + 1",
             (), False))
        self._evictions_pending = True
        return deleted

    def epoch(self) -> int:
        """How many evictions this cache has seen: part of every stage task's cache key."""
        row = self.db.one("SELECT value FROM meta WHERE name = 'epoch'")
        return row[0] if row else 0

    def has_evictions(self) -> bool:
        return self.db.one("SELECT 1 FROM evictions LIMIT 1") is not None

    def evicted(self, keys: list[str]) -> set[str]:
        """Those of `keys` that were evicted and not made again since."""
        return {r[0] for r in self.db.query_keys("SELECT key FROM evictions WHERE key IN ({keys})", keys)}

    def close(self) -> None:
        self.db.close()


def existing_request_cache(cache: CacheConfig, outputs_dir: Path,
                           readonly: bool = False) -> RequestCache | None:
    """The request cache builds with this cache setting and outputs dir wrote, or None if
    there is no SQLite file yet (a database at cache.url always exists)."""
    if not cache_exists(cache, outputs_dir, "llm"):
        return None
    return RequestCache.at(cache, outputs_dir, readonly=readonly)
