"""Persistent request cache (SQLite): the raw record of every model call.

Key = sha256 of the canonical JSON of (endpoint identity, model, messages,
sampling params, seed, response format). Operational fields - timeouts,
concurrency, retries, API keys, the embedded server's port - are excluded, so
changing them never invalidates the cache (the inspect_ai rule).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.records import canonical_json, sha256_hex
from pipeline.store import open_cache_db

KEY_FIELDS = ("endpoint", "model", "messages", "temperature", "top_p", "max_tokens", "seed",
              "response_format")


def request_key(request: dict[str, Any]) -> str:
    """The cache key of a request: only the fields in KEY_FIELDS count."""
    return sha256_hex(canonical_json({k: request.get(k) for k in KEY_FIELDS}))


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
    created_at REAL NOT NULL
)
"""


class RequestCache:
    """Thread-safe SQLite store of calls. Safe to open from several processes (WAL)."""

    def __init__(self, path: Path, readonly: bool = False):
        """`readonly` opens an existing cache without writing to it (audits of a copied
        or read-only outputs/ folder)."""
        self.path = path
        self._lock = threading.Lock()
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            return
        self._db = open_cache_db(path, _SCHEMA)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, endpoint, model, request, response, text, usage, latency_s, created_at"
                " FROM calls WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return {
            "key": row[0], "endpoint": row[1], "model": row[2],
            "request": json.loads(row[3]), "response": json.loads(row[4]), "text": row[5],
            "usage": json.loads(row[6]) if row[6] else None, "latency_s": row[7],
            "created_at": row[8],
        }

    def text(self, key: str) -> str | None:
        """Only the answer's text: what a build needs on a hit (get() parses the whole record)."""
        with self._lock:
            row = self._db.execute("SELECT text FROM calls WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any], text: str,
            usage: dict[str, Any] | None, latency_s: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, request["endpoint"], request["model"], canonical_json(request),
                 canonical_json(response), text, canonical_json(usage) if usage else None,
                 latency_s, time.time()),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
