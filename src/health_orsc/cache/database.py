"""The databases behind the request cache and the embedding cache: SQLite files under
outputs/cache/ (the default), or one PostgreSQL database (`cache.url`) that many
processes on many hosts write at once.

A `Database` speaks the SQL both understand (`?` placeholders, `INSERT ... ON CONFLICT`),
so each cache is written once for both backends. Every write is one transaction; rows are
keyed, and inserts skip a key that is already there, so concurrent writers neither lose
nor duplicate a row.

Example:
    db = open_database(config.cache, config.outputs_dir, "llm", SCHEMA, config.source)
    rows = db.query("SELECT key FROM calls WHERE role = ?", ("judge_1",))
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from health_orsc.core.config import CacheConfig
from health_orsc.core.errors import InputError, Resumable, shorten

# SQLite file names under outputs/cache/, by cache
SQLITE_FILES = {"llm": "llm.sqlite", "embeddings": "embeddings.sqlite"}


def open_cache_db(path: Path, schema: str) -> sqlite3.Connection:
    """A cache database under outputs/cache/, shared by threads and processes (WAL).
    No fsync per commit: a committed row survives the process being killed
    (crash-resume); only an OS crash can lose the last few."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    db.commit()
    return db


class CacheUnavailable(Resumable):
    """The cache database stopped answering mid-run. What was committed stays: run again
    once it is back, and the run resumes from it."""


T = TypeVar("T")
RECONNECT_WAITS_S = (0.2, 0.5, 1.0, 2.0)  # before each new connection to a PostgreSQL cache


class Database:
    """One connection, shared by threads (each call holds a lock). On PostgreSQL a
    connection that drops (a restart, a proxy or the server ending idle or busy sessions)
    is opened again through `reconnect` and the statement run again, up to
    len(RECONNECT_WAITS_S) times: every write is idempotent (INSERT ... ON CONFLICT, DELETE
    by key), so a transaction whose commit was lost with the connection is safe to repeat.
    A server still away after that is CacheUnavailable."""

    def __init__(self, conn: Any, postgres: bool, where: str, reconnect: Callable[[], Any] | None = None):
        self._conn = conn
        self.postgres = postgres
        self.where = where  # the file or URL, for messages
        self._reconnect = reconnect
        self._lock = threading.Lock()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self._run(lambda conn: list(conn.execute(self._sql(sql), args).fetchall()))

    def _run(self, action: Callable[[Any], T]) -> T:
        """`action(connection)` under the lock; on PostgreSQL, again on a new connection
        when it dropped (see the class)."""
        with self._lock:
            if not self.postgres:
                return action(self._conn)
            import psycopg

            for wait in (*RECONNECT_WAITS_S, None):
                try:
                    return action(self._conn)
                except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                    if wait is None or self._reconnect is None:
                        problem = shorten(" ".join(str(err).split()), 300)
                        raise CacheUnavailable(f"the cache database {self.where} failed: {problem}") from err
                time.sleep(wait)
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                try:
                    self._conn = self._reconnect()
                except (InputError, psycopg.Error):
                    pass  # still away: the next attempt fails at once and waits longer
            raise AssertionError("unreachable")

    def query_keys(self, sql: str, keys: Sequence[str], chunk: int = 500) -> list[tuple]:
        """`sql` with `IN ({keys})` run over `keys` a chunk at a time (bounded parameter lists)."""
        rows: list[tuple] = []
        for i in range(0, len(keys), chunk):
            part = keys[i:i + chunk]
            rows += self.query(sql.format(keys=",".join("?" * len(part))), part)
        return rows

    def one(self, sql: str, args: Sequence[Any] = ()) -> tuple | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def write(self, *statements: tuple[str, Sequence[Any] | Iterable[Sequence[Any]], bool]) -> list[int]:
        """Run (sql, args, many) statements in one transaction; their row counts."""
        statements = tuple((sql, list(args) if many else args, many) for sql, args, many in statements)
        write = self._postgres_write if self.postgres else self._sqlite_write
        return self._run(write(statements))

    def _postgres_write(self, statements: tuple) -> Callable[[Any], list[int]]:
        def write(conn: Any) -> list[int]:
            counts = []
            with conn.transaction(), conn.cursor() as cur:
                for sql, args, many in statements:
                    if many:
                        cur.executemany(self._sql(sql), args)
                    else:
                        cur.execute(self._sql(sql), args)
                    counts.append(cur.rowcount)
            return counts
        return write

    @staticmethod
    def _sqlite_write(statements: tuple) -> Callable[[Any], list[int]]:
        def write(conn: Any) -> list[int]:
            counts = []
            try:
                for sql, args, many in statements:
                    cur = (conn.executemany if many else conn.execute)(sql, args)
                    counts.append(cur.rowcount)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return counts
        return write

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def cache_exists(cache: CacheConfig, outputs_dir: Path, name: str) -> bool:
    """Whether the `name` cache is there to read: its SQLite file under outputs_dir/cache/,
    or always for a database at cache.url (its tables are made on opening)."""
    return cache.url is not None or (outputs_dir / "cache" / SQLITE_FILES[name]).is_file()


def open_database(cache: CacheConfig, outputs_dir: Path, name: str, schema: dict[str, str],
                  source: Path | None = None, readonly: bool = False) -> Database:
    """The `name` cache's database ("llm" or "embeddings"): SQLite under outputs_dir/cache/,
    or the PostgreSQL database at cache.url (InputError, exit 2, if it cannot be reached).
    `schema`: its tables' DDL per backend ("sqlite", "postgres"). `readonly` opens an
    existing SQLite file without creating or changing anything."""
    if cache.url is None:
        return open_sqlite(outputs_dir / "cache" / SQLITE_FILES[name], schema["sqlite"], readonly)
    conn = connect_postgres(cache, source)
    db = Database(conn, postgres=True, where=cache.url, reconnect=lambda: connect_postgres(cache, source))
    # The tables are made even to read (a database no build has used reads as empty).
    # Many processes may start at once: one creates the tables, the others wait.
    lock = int.from_bytes(hashlib.sha256(f"health-orsc:{name}".encode()).digest()[:4], "big")
    db.write(("SELECT pg_advisory_xact_lock(?)", (lock,), False),
             *((stmt, (), False) for stmt in schema["postgres"].split(";") if stmt.strip()))
    return db


def open_sqlite(path: Path, schema: str, readonly: bool = False) -> Database:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = open_cache_db(path, schema)
    return Database(conn, postgres=False, where=str(path))


def connect_postgres(cache: CacheConfig, source: Path | None = None):
    """A connection to cache.url (autocommit: each write is an explicit transaction), with
    the password from cache.password_env if set (else libpq's PGPASSWORD or ~/.pgpass)."""
    import psycopg

    kwargs: dict[str, Any] = {}
    if cache.password_env is not None:
        password = os.environ.get(cache.password_env)
        if password is None:
            raise InputError(source, "cache.password_env",
                             f"environment variable {cache.password_env} is not set",
                             f"export {cache.password_env}=... (the database password) before running")
        kwargs["password"] = password
    try:
        return psycopg.connect(cache.url, autocommit=True, connect_timeout=10, **kwargs)
    except psycopg.Error as err:
        problem = shorten(" ".join(str(err).split()), 300)
        raise InputError(source, "cache.url", f"cannot connect to {cache.url}: {problem}",
                         "start the database, or fix the URL (and the password in 'cache.password_env');"
                         " remove 'cache' to use the SQLite cache under outputs/cache/") from None
