"""Persistent request cache (SQLite): the raw record of every model call.

Rows are keyed by ChatRequest.key (pipeline/llm/request.py). Only replies that are
chat completions are stored; a bad answer that was a valid completion stays until
it is evicted (`orsc cache evict`). An eviction is remembered: the key is listed in
`evictions` until a call with that key is made again, and a counter (the cache's
epoch) goes up, which re-runs every stage task of the next build (their Prefect
cache key includes it) and makes `--base` rebuild any carried category that used
an evicted call.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.records import canonical_json
from pipeline.store import open_cache_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    text TEXT NOT NULL,
    usage TEXT,
    latency_s REAL NOT NULL,
    created_at REAL NOT NULL,
    role TEXT
);
CREATE TABLE IF NOT EXISTS evictions (key TEXT PRIMARY KEY, evicted_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_FIELDS = "key, endpoint, model, request, response, text, usage, latency_s, created_at, role"


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
    """Thread-safe SQLite store of calls. Safe to open from several processes (WAL)."""

    def __init__(self, path: Path, readonly: bool = False):
        """`readonly` opens an existing cache without writing to it (audits of a copied
        or read-only outputs/ folder)."""
        self.path = path
        self._lock = threading.Lock()
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self._db = open_cache_db(path, _SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(calls)")}
        if "role" not in columns and not readonly:  # a cache written before calls had a role
            self._db.execute("ALTER TABLE calls ADD COLUMN role TEXT")
            columns.add("role")
        self._fields = _FIELDS if "role" in columns else _FIELDS.replace("role", "NULL")
        self._evictions_pending = not readonly and self.has_evictions()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._fields} FROM calls WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return {
            "key": row[0], "endpoint": row[1], "model": row[2],
            "request": json.loads(row[3]), "response": json.loads(row[4]), "text": row[5],
            "usage": json.loads(row[6]) if row[6] else None, "latency_s": row[7],
            "created_at": row[8], "role": row[9],
        }

    def text(self, key: str) -> str | None:
        """Only the answer's text: what a build needs on a hit (get() parses the whole record)."""
        with self._lock:
            row = self._db.execute("SELECT text FROM calls WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put_many(self, calls: list[CachedCall]) -> None:
        """Store calls in one transaction (one commit: the costly part of a write)."""
        rows = [(c.key, c.endpoint, c.model, c.request_json, c.response_json, c.text,
                 canonical_json(c.usage) if c.usage else None, c.latency_s, c.created_at, c.role)
                for c in calls]
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if self._evictions_pending:
                self._db.executemany("DELETE FROM evictions WHERE key = ?", [(c.key,) for c in calls])
            self._db.commit()

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
        with self._lock:
            return [r[0] for r in self._db.execute(sql, args)]

    def evict(self, keys: list[str]) -> int:
        """Delete these calls, remember them as evicted, and raise the epoch. Returns the
        number of calls deleted."""
        now = time.time()
        with self._lock:
            deleted = 0
            for key in keys:
                deleted += self._db.execute("DELETE FROM calls WHERE key = ?", (key,)).rowcount
                self._db.execute("INSERT OR REPLACE INTO evictions VALUES (?, ?)", (key, now))
            if keys:
                self._db.execute("INSERT INTO meta VALUES ('epoch', 1)"
                                 " ON CONFLICT(name) DO UPDATE SET value = value + 1")
                self._evictions_pending = True
            self._db.commit()
        return deleted

    def epoch(self) -> int:
        """How many evictions this cache has seen: part of every stage task's cache key."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        return row[0] if row else 0

    def has_evictions(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM evictions LIMIT 1").fetchone() is not None

    def evicted(self, keys: list[str]) -> set[str]:
        """Those of `keys` that were evicted and not made again since."""
        found: set[str] = set()
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                found.update(r[0] for r in self._db.execute(
                    f"SELECT key FROM evictions WHERE key IN ({','.join('?' * len(chunk))})", chunk))
        return found

    def close(self) -> None:
        with self._lock:
            self._db.close()
