"""Row files written as rows arrive: checksums taken while writing equal the files', rows
come back in order from several row groups, and one row group is what writing each file
whole gave."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from health_orsc.core.records import SnapshotRow
from health_orsc.snapshot import rowfiles
from health_orsc.snapshot.rowfiles import ROW_SCHEMA, RowSink, SnapshotFiles
from health_orsc.snapshot.store import file_sha256


def row(i: int, category: str, rejected: bool = False) -> SnapshotRow:
    return SnapshotRow(id=f"{category}-{i:05d}", category=category, level="easy", prompt=f"question {i} é",
                       original_question=None, seed_id=None, seed_topic=None, seed_source=None, template=None,
                       template_sha=None, template_text=None, variant=None, generator=None,
                       generator_params=None, generation_call=None, votes=[], benign_votes=None,
                       n_jurors=None,
                       reason="duplicate" if rejected else None, duplicate_of=None, similarity=None)


def test_streamed_row_files_carry_their_checksums_and_rows_in_order(tmp_path):
    rows = [row(i, "a") for i in range(25)] + [row(i, "c") for i in range(8)]
    rejected = [row(i, "a", rejected=True) for i in range(3)]
    files = SnapshotFiles(tmp_path)
    with RowSink(files, ["a", "b", "c"], row_group=10) as sink:
        for r in rows + rejected:
            sink.add(r)
    listed = files.listed()
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert sorted(listed) == on_disk
    for rel, entry in listed.items():  # taken while writing, equal to a read of the file
        assert rel in files.entries
        assert entry.sha256 == file_sha256(tmp_path / rel)
        assert entry.bytes == (tmp_path / rel).stat().st_size
    prompts = pq.ParquetFile(tmp_path / "prompts.parquet")
    assert prompts.num_row_groups == 4  # 33 rows in groups of 10
    assert [SnapshotRow.model_validate(r) for r in prompts.read().to_pylist()] == rows
    lines = (tmp_path / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [r.id for r in rows]
    assert pq.read_table(tmp_path / "data/c.parquet").column("id").to_pylist() == [r.id for r in rows[25:]]
    # a category that kept nothing still has its (empty) files
    assert (tmp_path / "data/b.jsonl").read_bytes() == b""
    assert pq.read_table(tmp_path / "data/b.parquet").num_rows == 0
    assert pq.read_table(tmp_path / "rejected.parquet").column("id").to_pylist() == [r.id for r in rejected]


def test_a_file_of_one_row_group_is_what_writing_it_whole_gives(tmp_path, monkeypatch):
    monkeypatch.setattr(rowfiles, "BATCH", 5)  # the group's rows pass through Arrow batches of 5,
    rows = [row(i, "a") for i in range(7)] + [row(i, "b") for i in range(5)]  # cut where "a" ends
    files = SnapshotFiles(tmp_path / "streamed")
    with RowSink(files, ["a", "b"]) as sink:
        for r in rows:
            sink.add(r)
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.Table.from_pylist([r.model_dump(mode="json") for r in rows], schema=ROW_SCHEMA), whole)
    assert (tmp_path / "streamed/prompts.parquet").read_bytes() == whole.read_bytes()
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=ROW_SCHEMA), empty)
    assert (tmp_path / "streamed/rejected.parquet").read_bytes() == empty.read_bytes()


def test_kept_rows_out_of_category_order_are_refused(tmp_path):
    files = SnapshotFiles(tmp_path)
    with pytest.raises(ValueError, match="out of the snapshot's order"), RowSink(files, ["a", "b"]) as sink:
        for r in [row(0, "b"), row(0, "a")]:
            sink.add(r)
