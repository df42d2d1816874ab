"""`orsc annotate --rubrics` and `orsc validate`: people keep, drop or edit the rubrics of the
validation sample's kept prompts (CSV and Label Studio); the validity report's `rubrics`
section matches a hand count, and `orsc verify` re-derives it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from statsmodels.stats.proportion import proportion_confint

from health_orsc.cli import main
from health_orsc.snapshot.store import read_jsonl_rows, read_sample
from tests.conftest import csv_rows, sampled_snapshot, write_csv

pytestmark = pytest.mark.slow

EDIT = "helpful 5 addresses_need: Answers the question asked.\nharm -10 method: Gives a method."


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    return sampled_snapshot(tmp_path_factory.mktemp("rubric-review"))


@pytest.fixture(scope="module")
def tasks(snap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tasks")
    assert main(["annotate", str(snap), "--out", str(tmp / "csv"), "--rubrics"]) == 0
    assert main(["annotate", str(snap), "--out", str(tmp / "ls"), "--rubrics",
                 "--format", "label-studio"]) == 0
    labels = []
    for name in ("annotator_1", "annotator_2", "annotator_3"):
        rows = csv_rows(tmp / "csv" / f"{name}.csv")
        for r in rows:
            r["label"] = "benign"
        labels.append(write_csv(tmp / f"{name}.labels.csv", rows))
    return {"tmp": tmp, "labels": labels}


def kept_with_rubric(snap: Path) -> dict[str, dict]:
    rows = {r["id"]: r for r in read_jsonl_rows(snap / "prompts.jsonl")}
    return {s["id"]: rows[s["id"]] for s in read_sample(snap) if s["source"] == "kept"}


def test_review_tasks_show_the_kept_prompts_rubrics_apart_from_the_blind_labels(snap, tasks):
    kept = kept_with_rubric(snap)
    assert kept and all(r.get("rubric") for r in kept.values())
    out = tasks["tmp"] / "csv"
    for name in ("annotator_1", "annotator_2", "annotator_3"):
        labels = csv_rows(out / f"{name}.csv")
        assert "rubric" not in labels[0]  # the blind label tasks are as before
        reviews = csv_rows(out / f"{name}.rubrics.csv")
        # each annotator reviews the kept ones among their own items, and nothing else
        assert [r["prompt_id"] for r in reviews] == [r["prompt_id"] for r in labels if r["prompt_id"] in kept]
        for r in reviews:
            criteria = kept[r["prompt_id"]]["rubric"]["criteria"]
            assert r["rubric"] == "\n".join(f"{c['kind']} {c['points']} {c['id']}: {c['text']}"
                                            for c in criteria)
            assert r["verdict"] == r["edited_rubric"] == ""
    ls = tasks["tmp"] / "ls"
    assert 'name="verdict"' in (ls / "rubric_label_config.xml").read_text()
    ls_tasks = json.loads((ls / "annotator_1.rubrics.tasks.json").read_text())
    assert [t["data"]["prompt_id"] for t in ls_tasks] == [
        r["prompt_id"] for r in csv_rows(out / "annotator_1.rubrics.csv")]


def _reviews(tasks) -> tuple[list[Path], dict[str, dict[str, str]]]:
    """annotator_1 and _2 review in CSV, annotator_3 in Label Studio: every rubric kept, but
    the first shared item (edit, drop, keep: a tie) and the second (drop, drop, keep)."""
    out = tasks["tmp"]
    csv_reviews = {n: csv_rows(out / "csv" / f"{n}.rubrics.csv") for n in ("annotator_1", "annotator_2")}
    shared = sorted(set.intersection(*({r["prompt_id"] for r in rows} for rows in csv_reviews.values())))
    verdicts: dict[str, dict[str, str]] = {}
    plan = {("annotator_1", shared[0]): "edit", ("annotator_2", shared[0]): "drop",
            ("annotator_1", shared[1]): "drop", ("annotator_2", shared[1]): "drop"}
    files = []
    for name, rows in csv_reviews.items():
        for r in rows:
            r["verdict"] = plan.get((name, r["prompt_id"]), "keep")
            r["edited_rubric"] = EDIT if r["verdict"] == "edit" else ""
            verdicts.setdefault(r["prompt_id"], {})[name] = r["verdict"]
        files.append(write_csv(out / f"{name}.reviewed.csv", rows))
    export = []
    for n, task in enumerate(json.loads((out / "ls" / "annotator_3.rubrics.tasks.json").read_text()), 1):
        result = [{"from_name": "verdict", "to_name": "prompt", "type": "choices",
                   "value": {"choices": ["keep"]}}]
        annotation = {"id": n, "completed_by": 9, "was_cancelled": False, "result": result}
        export.append({"id": n, "data": task["data"], "annotations": [annotation]})
        verdicts.setdefault(task["data"]["prompt_id"], {})["label-studio:9"] = "keep"
    files.append(out / "reviews-export.json")
    files[-1].write_text(json.dumps(export))
    return files, verdicts


def test_validate_records_the_reviews_and_verify_rederives_them(snap, tasks, tmp_path, capsys):
    files, verdicts = _reviews(tasks)
    args = ["validate", str(snap), *map(str, tasks["labels"]), *map(str, files), "--name", "v1-reviewed"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]["rubrics"]
    # by hand: an item's verdict is the one most reviewers gave; a tie leaves it to fix
    majority = {}
    for pid, v in verdicts.items():
        counts = sorted(((list(v.values()).count(x), x) for x in set(v.values())), reverse=True)
        majority[pid] = None if len(counts) > 1 and counts[0][0] == counts[1][0] else counts[0][1]
    kept = sum(m == "keep" for m in majority.values())
    low, high = proportion_confint(kept, len(majority), alpha=0.10, method="wilson")  # confidence 0.9
    assert report["items"] == len(majority) and report["reviews"] == sum(map(len, verdicts.values()))
    assert report["kept_as_is"]["count"] == kept and report["kept_as_is"]["low"] == pytest.approx(low)
    assert report["kept_as_is"]["high"] == pytest.approx(high)
    assert {f["prompt_id"]: f["majority"] for f in report["to_fix"]} == {
        p: m for p, m in majority.items() if m != "keep"}
    assert sorted(str(m) for m in majority.values() if m != "keep") == ["None", "drop"]  # as planned
    edited = [f for f in report["to_fix"] if f["edits"]]
    assert len(edited) == 1 and edited[0]["edits"] == [EDIT]
    new = snap.parent / "v1-reviewed"
    assert (new / "validation" / "rubric_reviews.jsonl").is_file()
    assert "Rubrics reviewed by people" in (new / "README.md").read_text()
    assert main(["verify", str(new)]) == 0
    # a review changed afterwards (its checksum updated to match) no longer gives the report
    forged = tmp_path / "forged"
    shutil.copytree(new, forged)
    path = forged / "validation" / "rubric_reviews.jsonl"
    path.write_text(path.read_text().replace('"verdict":"drop"', '"verdict":"keep"'))
    manifest = json.loads((forged / "MANIFEST.json").read_text())
    data = path.read_bytes()
    manifest["files"]["validation/rubric_reviews.jsonl"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                            "bytes": len(data)}
    (forged / "MANIFEST.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["verify", str(forged)]) == 1
    assert "validation/report.json is not the report" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"verdict": "maybe"}, "'maybe' is not one of keep, drop, edit"),
    ({"verdict": "edit", "edited_rubric": "helpful five bad: x"}, "edited_rubric line 1"),
    ({"verdict": "edit", "edited_rubric": ""}, "is empty, but the verdict is edit"),
    ({"verdict": "keep", "edited_rubric": EDIT}, "is filled in, but the verdict is keep"),
    ({"verdict": "keep", "prompt_id": "not-a-kept-item"}, "is not a kept prompt of the validation sample"),
])
def test_bad_reviews_exit_2_and_write_nothing(snap, tasks, tmp_path, capsys, change, message):
    rows = csv_rows(tasks["tmp"] / "csv" / "annotator_1.rubrics.csv")
    for r in rows:
        r["verdict"] = "keep"
    rows[0].update(change)
    bad = write_csv(tmp_path / "bad.rubrics.csv", rows)
    assert main(["validate", str(snap), *map(str, tasks["labels"]), str(bad), "--name", "never"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err and "fix:" in err
    assert not (snap.parent / "never").exists()
