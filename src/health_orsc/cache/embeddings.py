"""The embedding cache: vectors by (model, text), in SQLite under outputs/cache/ or in the
`cache.url` PostgreSQL database (cache.database). The dedup stage reads and fills it;
`orsc cache migrate` copies it.
"""

from __future__ import annotations

from pathlib import Path

from health_orsc.cache.database import Database, open_database, open_sqlite
from health_orsc.core.config import BuildConfig, CacheConfig


class EmbeddingCache:
    """Vectors by (model, text) in SQLite or PostgreSQL: a prompt is embedded once, in
    whichever build or category it comes back (regenerating one category embeds only its
    new prompts)."""

    SCHEMA = {"sqlite": "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)",
              "postgres": "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BYTEA NOT NULL)"}

    def __init__(self, db: Database | Path):
        """`db`: an open Database, or the path of a SQLite file."""
        self.db = db if isinstance(db, Database) else open_sqlite(db, self.SCHEMA["sqlite"])

    @classmethod
    def at(cls, cache: CacheConfig, outputs_dir: Path, source: Path | None = None,
           readonly: bool = False) -> EmbeddingCache:
        """The embedding cache of a cache setting: outputs_dir/cache/embeddings.sqlite, or
        the `cache.url` database."""
        return cls(open_database(cache, outputs_dir, "embeddings", cls.SCHEMA, source, readonly))

    @classmethod
    def open(cls, config: BuildConfig) -> EmbeddingCache:
        """The config's embedding cache."""
        return cls.at(config.cache, config.outputs_dir, config.source)

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        return {k: bytes(v) for k, v in self.db.query_keys(
            "SELECT key, vector FROM vectors WHERE key IN ({keys})", keys)}

    def put_many(self, items: list[tuple[str, bytes]]) -> int:
        """Store vectors; a key already there is kept. The number of new ones."""
        [inserted] = self.db.write(("INSERT INTO vectors VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                                    items, True))
        return inserted

    def rows(self, after: str = "", limit: int = 1000) -> list[tuple[str, bytes]]:
        """Stored (key, vector) by key, `limit` after the key `after` (a migration)."""
        return [(k, bytes(v)) for k, v in self.db.query(
            "SELECT key, vector FROM vectors WHERE key > ? ORDER BY key LIMIT ?", (after, limit))]

    def close(self) -> None:
        self.db.close()
