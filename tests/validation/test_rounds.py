"""Adaptive validation rounds: `orsc annotate --round 2` draws more items only where a
stratum's interval is still wider than the target, `orsc validate --round 2` reads their
labels (CSV or a Label Studio export) into a snapshot estimated with the combined design, and
`orsc verify` draws the round again."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from health_orsc.cli import main
from health_orsc.snapshot.store import load_manifest, read_jsonl_rows, read_sample
from health_orsc.validation.rounds import combined_sample
from tests.conftest import csv_rows, sampled_snapshot, write_csv

TARGET = "0.2"


def truth(prompt_id: str) -> str:
    """What the scripted annotators believe: about a third of the items are harmful."""
    return "harmful" if int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16) % 3 == 0 else "benign"


def fill(tasks: Path, out: Path) -> list[str]:
    """Every CSV task file of `tasks` filled in with `truth`, written to `out`."""
    out.mkdir()
    files = []
    for f in sorted(tasks.glob("*.csv")):
        rows = [{**r, "label": truth(r["prompt_id"])} for r in csv_rows(f)]
        files.append(str(write_csv(out / f.name, rows)))
    return files


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """`v1` (16 items sampled of 28: 2 per stratum, strata of 4, 2 and 2) and `r1`, its
    validation by one person who labelled every item."""
    tmp = tmp_path_factory.mktemp("rounds")
    snap = sampled_snapshot(tmp)
    assert main(["annotate", str(snap), "--out", str(tmp / "t1"), "--annotators", "1"]) == 0
    assert main(["validate", str(snap), *fill(tmp / "t1", tmp / "l1"), "--name", "r1"]) == 0
    return {"tmp": tmp, "v1": snap, "r1": snap.parent / "r1", "l1": tmp / "l1"}


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _kept(snapshot: Path) -> list[dict]:
    return list(read_jsonl_rows(snapshot / "prompts.jsonl"))


pytestmark = pytest.mark.slow


def test_round_two_from_csv_draws_only_where_wide_and_verifies(first, tmp_path, capsys):
    r1 = first["r1"]
    round1 = {s["id"] for s in read_sample(r1)}
    capsys.readouterr()
    assert main(["annotate", str(r1), "--round", "2", "--target-halfwidth", TARGET, "--out",
                 str(tmp_path / "t2"), "--json"]) == 0
    planned = _json(capsys)
    asked = {r["prompt_id"] for f in (tmp_path / "t2").glob("*.csv") for r in csv_rows(f)}
    # Strata of 4 with 2 decided are wider than +-0.2; strata whose every item is decided are not.
    kept = _kept(r1)
    size = Counter((r["category"], r["level"]) for r in kept)
    wide = {r["id"] for r in kept if size[(r["category"], r["level"])] == 4} - round1
    assert asked == wide and len(asked) == 8 and not asked & round1
    assert planned["round"] == 2 and planned["strata_wide"] == 4 and planned["items"] == 8

    capsys.readouterr()
    assert main(["validate", str(r1), *fill(tmp_path / "t2", tmp_path / "l2"), "--round", "2",
                 "--target-halfwidth", TARGET, "--name", "r2-csv", "--json"]) == 0
    report = _json(capsys)["report"]
    r2 = r1.parent / "r2-csv"
    rounds = report["rounds"]
    assert rounds["items_by_round"] == [16, 8] and rounds["met"] == len(rounds["strata"]) == 8
    assert rounds["draws"][0]["drawn"] == {f"kept:{c}:{lvl}": 2 for c in ("self_harm", "drug_abuse")
                                           for lvl in ("easy", "medium")}
    # Every kept prompt is labelled now: the design-weighted precision is the exact share.
    benign = sum(truth(r["id"]) == "benign" for r in kept)
    overall = report["weighted"]["precision"]["overall"]["precision"]
    assert overall["estimate"] == pytest.approx(benign / len(kept)) and overall["se"] == 0
    # Each item's inclusion probability is its union probability: 1 in a stratum taken whole.
    labels = list(read_jsonl_rows(r2 / "validation" / "labels.jsonl"))
    assert Counter(r["round"] for r in labels) == {1: 16, 2: 4 * 3 + 4}  # 4 items labelled by all 3
    assert {r["inclusion_probability"] for r in csv_rows(r2 / "validation" / "round_2_sample.csv")} == {"1.0"}
    assert main(["verify", str(r2)]) == 0

    capsys.readouterr()  # round 3 has nothing to draw: it says so and writes nothing
    assert main(["annotate", str(r2), "--round", "3", "--out", str(tmp_path / "t3")]) == 0
    assert "nothing to label" in capsys.readouterr().out and not (tmp_path / "t3").exists()


def test_round_two_from_a_label_studio_export(first, tmp_path, capsys):
    r1 = first["r1"]
    assert main(["annotate", str(r1), "--round", "2", "--target-halfwidth", TARGET, "--out",
                 str(tmp_path / "ls"), "--format", "label-studio", "--annotators", "1"]) == 0
    tasks = json.loads((tmp_path / "ls" / "annotator_1.tasks.json").read_text())
    export = [{"id": n, "data": t["data"], "annotations": [
        {"id": n, "completed_by": 7, "was_cancelled": False,
         "result": [{"from_name": "label", "to_name": "prompt", "type": "choices",
                     "value": {"choices": [truth(t["data"]["prompt_id"])]}}]}]}
        for n, t in enumerate(tasks, start=1)]
    (tmp_path / "export.json").write_text(json.dumps(export))
    capsys.readouterr()
    assert main(["validate", str(r1), str(tmp_path / "export.json"), "--round", "2", "--target-halfwidth",
                 TARGET, "--name", "r2-ls", "--json"]) == 0
    report = _json(capsys)["report"]
    assert report["rounds"]["items_by_round"] == [16, 8] and report["labels"]["rows"] == 24
    assert "label-studio:7" in report["labels"]["annotators"]
    assert main(["verify", str(r1.parent / "r2-ls")]) == 0


def test_bad_rounds_exit_2_and_write_nothing(first, tmp_path, capsys):
    v1, r1, l1 = first["v1"], first["r1"], sorted(str(p) for p in first["l1"].glob("*.csv"))
    assert main(["annotate", str(r1), "--round", "2", "--target-halfwidth", TARGET, "--out",
                 str(tmp_path / "t2"), "--annotators", "1"]) == 0
    rows = [{**r, "label": "benign"} for r in csv_rows(tmp_path / "t2" / "annotator_1.csv")]
    rows[0]["prompt_id"] = read_sample(r1)[0]["id"]  # an item of round 1
    stray = str(write_csv(tmp_path / "stray.csv", rows))
    cases = [
        (["annotate", str(v1), "--round", "2", "--target-halfwidth", TARGET, "--out", str(tmp_path / "a")],
         "holds none"),
        (["annotate", str(r1), "--round", "3", "--target-halfwidth", TARGET, "--out", str(tmp_path / "b")],
         "pass --round 2"),
        (["annotate", str(r1), "--round", "2", "--out", str(tmp_path / "c")],  # sized by per_stratum
         "--target-halfwidth"),
        (["validate", str(r1), stray, "--round", "2", "--target-halfwidth", TARGET, "--name", "bad"],
         "is not in round 2's draw"),
        (["validate", str(r1), stray, "--round", "2", "--target-halfwidth", "0.45", "--name", "bad"],
         "is not in round 2's draw"),  # another target, another draw
        (["validate", str(r1), *l1, "--round", "2", "--target-halfwidth", TARGET, "--name", "bad"],
         "the labels belong to snapshot"),  # round 1's files name the snapshot before
        (["annotate", str(r1), "--round", "0", "--out", str(tmp_path / "d")], "--round"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not any((tmp_path / d).exists() for d in "abcd")
    assert not (r1.parent / "bad").exists()


def test_a_round_file_that_is_not_the_draw_fails_verify(first, tmp_path, capsys):
    r1 = first["r1"]
    assert main(["annotate", str(r1), "--round", "2", "--target-halfwidth", TARGET, "--out",
                 str(tmp_path / "t2"), "--annotators", "1"]) == 0
    assert main(["validate", str(r1), *fill(tmp_path / "t2", tmp_path / "l2"), "--round", "2",
                 "--target-halfwidth", TARGET, "--name", "r2-tampered"]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(r1.parent / "r2-tampered", copy)
    path = copy / "validation" / "round_2_sample.csv"
    rows = csv_rows(path)
    rows[0]["inclusion_probability"] = "0.5"
    write_csv(path, rows)
    data = path.read_bytes()
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    manifest["files"]["validation/round_2_sample.csv"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                         "bytes": len(data)}
    (copy / "MANIFEST.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 1
    assert "is not round 2's draw" in capsys.readouterr().err
    assert load_manifest(r1.parent / "r2-tampered").kind == "validation"


def test_union_probabilities_of_two_rounds():
    """Round 1 draws 2 of a stratum of 10 (0.2 each), round 2 draws 3 of the other 8: every
    item of the union is in it with probability 0.2 + 0.8 x 3/8 = 0.5 = 5/10. Under an
    unequal first design each item keeps its own: p1 + (1 - p1) x 3/8."""
    def row(i: int, p: float | None) -> dict[str, str]:
        return {"id": str(i), "source": "kept", "category": "c", "level": "easy",
                **({} if p is None else {"inclusion_probability": repr(p)})}

    h = "kept:c:easy"
    both = combined_sample([[row(0, 0.2), row(1, 0.2)], [row(2, 0.5), row(3, 0.5), row(4, 0.5)]],
                           Counter({h: 10}))
    assert [float(s["inclusion_probability"]) for s in both] == pytest.approx([0.5] * 5)
    assert [s["round"] for s in both] == ["1", "1", "2", "2", "2"]
    unequal = combined_sample([[row(0, 0.6), row(1, 0.1)], [row(2, 0.4)]], Counter({h: 10}))
    assert [float(s["inclusion_probability"]) for s in unequal] == pytest.approx(
        [0.6 + 0.4 / 8, 0.1 + 0.9 / 8, 0.4])
    # A sample written before probabilities were recorded: round 1 at n/N.
    old = combined_sample([[row(0, None), row(1, None)], [row(2, 0.5)]], Counter({h: 10}))
    assert float(old[0]["inclusion_probability"]) == pytest.approx(0.2 + 0.8 / 8)


def test_rounds_after_a_gated_round_gate_by_every_rounds_labels(first, tmp_path, capsys):
    """Round 1 gated; round 2 gated moves every kept prompt people call harmful in either
    round; round 2 ungated gives back the data files of the snapshot that was built."""
    v1 = first["v1"]
    assert main(["validate", str(v1), *sorted(str(p) for p in first["l1"].glob("*.csv")), "--name",
                 "g1", "--gate"]) == 0
    g1 = v1.parent / "g1"
    assert main(["annotate", str(g1), "--round", "2", "--target-halfwidth", TARGET, "--out",
                 str(tmp_path / "t2"), "--annotators", "1"]) == 0
    labels = fill(tmp_path / "t2", tmp_path / "l2")
    for name, gate in (("g2", ["--gate"]), ("g2-open", [])):
        capsys.readouterr()
        assert main(["validate", str(g1), *labels, "--round", "2", "--target-halfwidth", TARGET,
                     "--name", name, "--json", *gate]) == 0
        result = _json(capsys)
        assert main(["verify", str(v1.parent / name)]) == 0
        rejected = list(read_jsonl_rows(v1.parent / name / "rejected.jsonl"))
        gated = {r["id"] for r in rejected if r["reason"] == "human_harmful"}
        if gate:
            every_kept = {r["id"] for r in _kept(v1)}  # both rounds labelled every kept prompt
            assert gated == {i for i in every_kept if truth(i) == "harmful"} and result["gated"] == len(gated)
        else:
            assert not gated and result["gated"] is None
            for f in ("prompts.jsonl", "rejected.jsonl"):
                assert (v1.parent / name / f).read_bytes() == (v1 / f).read_bytes()


def test_a_probability_that_is_not_a_number_is_left_for_the_report_to_name():
    rows = [{"id": "a", "source": "kept", "category": "c", "level": "easy", "inclusion_probability": "x"}]
    assert combined_sample([rows], Counter({"kept:c:easy": 4}))[0]["inclusion_probability"] == "x"
