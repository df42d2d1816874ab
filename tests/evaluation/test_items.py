"""The evaluation reads a snapshot's kept rows one category at a time."""

from __future__ import annotations

import json

import pytest

from health_orsc.core.errors import InputError
from health_orsc.evaluation.answer import category_rows


def _rows(path, categories):
    path.write_text("".join(json.dumps({"id": f"{c}-{i}", "category": c, "level": "easy", "prompt": "q?",
                                        "votes": [], "rationale": "not read"}) + "\n"
                            for i, c in enumerate(categories)), encoding="utf-8")
    return path


def test_rows_come_a_category_at_a_time_in_the_snapshots_order_with_empty_ones(tmp_path):
    path = _rows(tmp_path / "prompts.jsonl", ["a", "a", "c", "other", "d"])
    got = [(cat, [r["id"] for r in rows]) for cat, rows in category_rows(path, ["a", "b", "c", "d", "e"])]
    assert got == [("a", ["a-0", "a-1"]), ("b", []), ("c", ["c-2"]), ("d", ["d-4"]), ("e", [])]
    [(_, [row])] = list(category_rows(path, ["c"]))
    assert "votes" not in row and row["prompt"] == "q?"  # only the fields the evaluation reads


def test_rows_out_of_the_category_order_are_refused(tmp_path):
    path = _rows(tmp_path / "prompts.jsonl", ["b", "a"])
    with pytest.raises(InputError, match="holds rows of a out of the snapshot's category order"):
        list(category_rows(path, ["a", "b"]))
