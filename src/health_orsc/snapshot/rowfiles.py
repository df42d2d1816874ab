"""A snapshot's row files, written as the rows arrive and hashed as they are written.

`prompts.*` and `rejected.*` (parquet and JSON lines) and `data/<category>.*` take one row at
a time: a JSON line goes out at once, parquet rows in row groups of `ROW_GROUP` rows (a
pyarrow ParquetWriter), gathered in Arrow record batches of `BATCH` rows, so a million-row
snapshot never holds more than a row group per open file, in Arrow's compact columns.
Every byte passes through a sha256 on its way to the disk, so MANIFEST.json's checksums
cost no second read of the files (`SnapshotFiles.listed`).

A snapshot of at most `ROW_GROUP` rows per file is byte for byte what writing each file in
one piece gave (one row group).

Example:
    files = SnapshotFiles(tmp)
    with RowSink(files, categories) as sink:
        for row in kept_rows:
            sink.add(row)
    manifest_files = files.listed()
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from health_orsc.core.records import SnapshotRow, arrow_schema, row_line
from health_orsc.snapshot.store import PROMPTS, REJECTED, FileEntry, data_file, file_sha256

ROW_SCHEMA = arrow_schema(SnapshotRow)
ROW_GROUP = 16_384  # rows per parquet row group (about 50 MB of Arrow memory at 3 KB a row)
BATCH = 1_024  # rows held as Python dicts before they become an Arrow record batch


class HashingFile(io.RawIOBase):
    """A file opened for writing whose sha256 and size follow every write."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._fh.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            try:
                self._fh.close()
            finally:
                super().close()

    def entry(self) -> FileEntry:
        return FileEntry(sha256=self.sha256.hexdigest(), bytes=self.size)


class SnapshotFiles:
    """The files written into a snapshot directory through `binary`/`text`, with their
    checksums taken while writing."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.entries: dict[str, FileEntry] = {}
        self._open: dict[str, HashingFile] = {}

    def binary(self, rel: str) -> HashingFile:
        raw = HashingFile(self.directory / rel)
        self._open[rel] = raw
        return raw

    def text(self, rel: str) -> io.TextIOWrapper:
        """A UTF-8 text file with '\\n' line ends; `done(rel)` once it is closed."""
        return io.TextIOWrapper(io.BufferedWriter(self.binary(rel), 1 << 20), encoding="utf-8", newline="\n")

    def done(self, rel: str) -> None:
        """Record a closed file's checksum."""
        raw = self._open.pop(rel)
        raw.close()
        self.entries[rel] = raw.entry()

    def close(self) -> None:
        """Close whatever is still open (a failed write), recording nothing."""
        for raw in self._open.values():
            raw.close()
        self._open.clear()

    def listed(self) -> dict[str, FileEntry]:
        """MANIFEST's `files`: every file below the directory with its sha256 and size;
        those written here as they were written, the rest read once."""
        return {rel: self.entries.get(rel) or FileEntry(sha256=file_sha256(p), bytes=p.stat().st_size)
                for p in sorted(self.directory.rglob("*")) if p.is_file()
                for rel in [p.relative_to(self.directory).as_posix()]}

    def sha256(self, rel: str) -> str:
        """A written file's sha256 (or the file's, read once)."""
        entry = self.entries.get(rel)
        return entry.sha256 if entry else file_sha256(self.directory / rel)


class RowFiles:
    """`<stem>.jsonl` and (unless `parquet` is false) `<stem>.parquet`, one row at a time:
    snapshot rows by default; other records with their Arrow `schema` and `line` (a JSON
    line of a record's fields)."""

    def __init__(self, files: SnapshotFiles, stem: str, parquet: bool = True, row_group: int | None = None,
                 schema: pa.Schema = ROW_SCHEMA, line: Callable[[dict[str, Any]], str] = row_line):
        self.files, self.stem, self.schema, self.line = files, stem, schema, line
        self.row_group = row_group or ROW_GROUP
        self.rows = 0
        self._lines = files.text(f"{stem}.jsonl")
        self._parquet = pq.ParquetWriter(files.binary(f"{stem}.parquet"), schema) if parquet else None
        self._batch: list[dict[str, Any]] = []      # the newest rows, as dicts (`add`)
        self._group: list[pa.RecordBatch] = []      # the row group's earlier rows, in Arrow
        self._grouped = 0

    def add(self, row: BaseModel) -> None:
        fields = row.model_dump(mode="json")
        self.add_line(self.line(fields))
        if self._parquet is not None:
            self._batch.append(fields)
            if len(self._batch) == BATCH:
                self._to_arrow()

    def add_line(self, line: str) -> None:
        """A row's JSON line alone: its parquet row comes in a batch (`add_arrow`)."""
        self._lines.write(line + "\n")
        self.rows += 1

    def add_arrow(self, batch: pa.RecordBatch) -> None:
        """The parquet rows of the lines added last (`add_line`), converted once for every
        file they go to: a kept row goes to prompts.* and its category's data files. A
        batch is cut where a row group ends."""
        if self._parquet is None:
            return
        while batch.num_rows:
            taken = batch.slice(0, self.row_group - self._grouped)
            self._group.append(taken)
            self._grouped += taken.num_rows
            batch = batch.slice(taken.num_rows)
            if self._grouped == self.row_group:
                self._flush()

    def _to_arrow(self) -> None:
        """The rows `add` holds as dicts, into the row group as one Arrow batch."""
        if self._batch:
            batch = pa.RecordBatch.from_pylist(self._batch, schema=self.schema)
            self._batch = []
            self.add_arrow(batch)

    def _flush(self) -> None:
        """Write the row group (the same bytes as one table of its rows: test_rowfiles)."""
        self._parquet.write_table(pa.Table.from_batches(self._group, schema=self.schema))
        self._group, self._grouped = [], 0

    def abort(self) -> None:
        """Stop writing after a failure: the files are left to be removed."""
        if self._parquet is not None:
            with contextlib.suppress(Exception):
                self._parquet.close()
            self._parquet = None

    def __enter__(self) -> RowFiles:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
            self.files.close()

    def close(self) -> None:
        self._lines.close()
        self.files.done(f"{self.stem}.jsonl")
        if self._parquet is not None:
            self._to_arrow()
            if self._group or not self.rows:  # an empty file: one empty row group
                self._flush()
            self._parquet.close()
            self.files.done(f"{self.stem}.parquet")


class RowSink:
    """prompts.* (kept rows), rejected.* and data/<category>.* (each category's kept rows),
    fed in snapshot order (by category, then level and id: writer.row_sort_key). Every
    category of `categories` gets its data files, empty when it kept nothing; without
    `parquet` (a snapshot older than schema_version 4) the data files are JSON lines only."""

    def __init__(self, files: SnapshotFiles, categories: list[str], parquet: bool = True,
                 row_group: int | None = None):
        self.files, self.categories, self.parquet, self.row_group = files, categories, parquet, row_group
        self.kept = RowFiles(files, PROMPTS, row_group=row_group)
        self.rejected = RowFiles(files, REJECTED, row_group=row_group)
        self._data: RowFiles | None = None
        self._kept: list[dict[str, Any]] = []  # kept rows not yet in Arrow (_kept_to_arrow)
        self._category: str | None = None
        self._position = -1  # the current category's place in `categories`

    def add(self, row: SnapshotRow) -> None:
        if row.reason is not None:
            self.rejected.add(row)
            return
        if row.category != self._category:
            at = self.categories.index(row.category) if row.category in self.categories else -1
            if at <= self._position:
                raise ValueError(f"kept rows of {row.category!r} are out of the snapshot's order")
            self._advance(at)
        fields = row.model_dump(mode="json")
        line = row_line(fields)
        self.kept.add_line(line)
        self._data.add_line(line)
        self._kept.append(fields)
        if len(self._kept) == BATCH:
            self._kept_to_arrow()

    def _kept_to_arrow(self) -> None:
        """The kept rows since the last batch, converted once for prompts.parquet and their
        category's data/<category>.parquet."""
        if self._kept:
            batch = pa.RecordBatch.from_pylist(self._kept, schema=ROW_SCHEMA)
            self._kept = []
            self.kept.add_arrow(batch)
            self._data.add_arrow(batch)

    def _advance(self, at: int) -> None:
        """Close the current category's data files and move to `categories[at]` (nothing
        past the end), giving the categories passed over (they kept nothing) empty ones."""
        self._kept_to_arrow()
        if self._data is not None:
            self._data.close()
            self._data = None
        for category in self.categories[self._position + 1:at]:
            self._data_files(category).close()
        if at < len(self.categories):
            self._category = self.categories[at]
            self._data = self._data_files(self._category)
        self._position = at

    def _data_files(self, category: str) -> RowFiles:
        return RowFiles(self.files, data_file(category).removesuffix(".jsonl"), self.parquet, self.row_group)

    def __enter__(self) -> RowSink:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            self.abort()
            return
        self.close()

    def abort(self) -> None:
        """Stop writing after a failure, closing every file (whose directory goes next)."""
        for rows in (self.kept, self.rejected, self._data):
            if rows is not None:
                rows.abort()
        self.files.close()

    def close(self) -> None:
        self._advance(len(self.categories))  # and the categories after the last that kept rows
        self.kept.close()
        self.rejected.close()


def write_row_files(directory: Path, kept: list[SnapshotRow], rejected: list[SnapshotRow],
                    categories: list[str], parquet: bool = True, files: SnapshotFiles | None = None
                    ) -> SnapshotFiles:
    """prompts.* and rejected.* (parquet and jsonl), and data/<category>.* per category
    (no parquet if `parquet` is false: a snapshot older than schema_version 4), from rows
    in snapshot order."""
    files = files or SnapshotFiles(directory)
    with RowSink(files, categories, parquet) as sink:
        for row in kept:
            sink.add(row)
        for row in rejected:
            sink.add(row)
    return files
