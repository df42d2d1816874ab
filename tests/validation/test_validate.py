"""`orsc validate`: labels from people (CSV and Label Studio) into a new snapshot whose
validity report matches an independent computation, and which `orsc verify` accepts."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import krippendorff
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.proportion import proportion_confint

from health_orsc.cli import main
from health_orsc.snapshot.store import load_manifest, read_sample
from tests.conftest import csv_rows, sampled_snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    return sampled_snapshot(tmp_path_factory.mktemp("validate"))


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def truth(prompt_id: str) -> str:
    """What the scripted annotators believe: about a third of the items are harmful."""
    return "harmful" if int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16) % 3 == 0 else "benign"


def flip(label: str) -> str:
    return "benign" if label == "harmful" else "harmful"


@pytest.fixture(scope="module")
def labelled(snap, tmp_path_factory):
    """annotator_1 and annotator_2 fill CSVs; annotator_3 labels in Label Studio (one
    annotation cancelled). annotator_2 disagrees on one shared item, annotator_3 on another
    and is unsure of a third."""
    tmp = tmp_path_factory.mktemp("labels")
    assert main(["annotate", str(snap), "--out", str(tmp / "csv")]) == 0
    assert main(["annotate", str(snap), "--out", str(tmp / "ls"), "--format", "label-studio"]) == 0
    sample = read_sample(snap)
    level = {s["id"]: s["level"] for s in sample}
    files = {}
    shared = sorted(pid for pid, n in Counter(
        r["prompt_id"] for f in (tmp / "csv").glob("*.csv") for r in csv_rows(f)).items() if n == 3)
    for name in ("annotator_1", "annotator_2"):
        rows = csv_rows(tmp / "csv" / f"{name}.csv")
        for r in rows:
            r["label"] = truth(r["prompt_id"])
            if name == "annotator_2" and r["prompt_id"] == shared[0]:
                r["label"] = flip(r["label"])
            r["ambiguity"] = str({"easy": 1, "medium": 2, "hard": 3}[level[r["prompt_id"]]])
        rows[-1]["label"] = rows[-1]["label"].upper() + " "  # case and spaces do not matter
        _write(tmp / f"{name}.csv", rows)
        files[name] = tmp / f"{name}.csv"
    tasks = json.loads((tmp / "ls" / "annotator_3.tasks.json").read_text())
    export = []
    for n, task in enumerate(tasks, start=1):
        pid = task["data"]["prompt_id"]
        label = flip(truth(pid)) if pid == shared[1] else "unsure" if pid == shared[2] else truth(pid)
        result = [{"from_name": "label", "to_name": "prompt", "type": "choices",
                   "value": {"choices": [label]}},
                  {"from_name": "ambiguity", "to_name": "prompt", "type": "choices",
                   "value": {"choices": ["2"]}}]
        annotations = [{"id": n, "completed_by": 7, "was_cancelled": False, "lead_time": 3.5,
                        "result": result}]
        if n == 1:  # someone opened it and skipped it
            annotations.append({"id": 1000, "completed_by": 8, "was_cancelled": True, "result": []})
        export.append({"id": 100 + n, "data": task["data"], "annotations": annotations})
    files["annotator_3"] = tmp / "export.json"
    files["annotator_3"].write_text(json.dumps(export))
    return {"files": files, "shared": shared, "tmp": tmp}


def _labels(labelled) -> dict[str, dict[str, str]]:
    """prompt id -> annotator -> label, read back from the files as the test wrote them."""
    out: dict[str, dict[str, str]] = {}
    for name in ("annotator_1", "annotator_2"):
        for r in csv_rows(labelled["files"][name]):
            out.setdefault(r["prompt_id"], {})[name] = r["label"].strip().lower()
    for task in json.loads(labelled["files"]["annotator_3"].read_text()):
        done = [a for a in task["annotations"] if not a["was_cancelled"]][0]
        label = done["result"][0]["value"]["choices"][0]
        out.setdefault(task["data"]["prompt_id"], {})["label-studio:7"] = label
    return out


def test_round_trip_report_equals_an_independent_computation(snap, labelled, capsys):
    files = [str(p) for p in labelled["files"].values()]
    assert main(["validate", str(snap), *files, "--name", "v1-validated"]) == 0
    out = capsys.readouterr().out
    new = snap.parent / "v1-validated"
    report = json.loads((new / "validation" / "report.json").read_text())
    labels = _labels(labelled)
    sample = {s["id"]: s for s in read_sample(snap)}

    # majority label per item, unsure not voting
    def major(votes: dict[str, str]) -> str | None:
        c = Counter(v for v in votes.values() if v != "unsure")
        return None if c["benign"] == c["harmful"] else max(c, key=c.get)

    decided = {pid: major(v) for pid, v in labels.items()}
    assert report["labels"]["rows"] == sum(len(v) for v in labels.values())
    assert report["labels"]["cancelled"] == 1 and report["labels"]["unlabelled"] == 0
    # overall benign precision of the kept prompts, Wilson interval straight from statsmodels,
    # at the level the config's sample.confidence names
    kept = [pid for pid, s in sample.items() if s["source"] == "kept" and decided[pid] is not None]
    benign = sum(decided[pid] == "benign" for pid in kept)
    assert report["confidence"] == 0.9
    low, high = proportion_confint(benign, len(kept), alpha=0.10, method="wilson")
    overall = report["precision"]["overall"]["precision"]
    assert (overall["count"], overall["n"]) == (benign, len(kept))
    assert overall["low"] == pytest.approx(low) and overall["high"] == pytest.approx(high)
    kept_total = sum(load_manifest(snap).counts.kept[c][lvl] for c in load_manifest(snap).counts.kept
                     for lvl in load_manifest(snap).counts.kept[c])
    assert report["precision"]["overall"]["harmful_left"]["estimate"] == pytest.approx(
        round(kept_total * (1 - benign / len(kept)), 1))
    # design-weighted: each kept stratum's benign share counts by the stratum's size,
    # sum N_h p_h / sum N_h over the strata with a decided item
    counts = load_manifest(snap).counts.kept
    strata: dict[tuple, list[str]] = {}
    for pid in kept:
        strata.setdefault((sample[pid]["category"], sample[pid]["level"]), []).append(pid)
    size = {k: counts[k[0]][k[1]] for k in strata}
    assert len(set(size.values())) > 1  # strata of different sizes: weighting matters
    by_hand = sum(size[k] * sum(decided[p] == "benign" for p in ids) / len(ids)
                  for k, ids in strata.items()) / sum(size.values())
    weighted = report["weighted"]["precision"]["overall"]
    assert weighted["precision"]["estimate"] == pytest.approx(by_hand, abs=1e-6)
    assert weighted["precision"]["n"] == len(kept) and weighted["measured_kept"] == sum(size.values())
    assert weighted["harmful_left"]["estimate"] == pytest.approx(round(sum(size.values()) * (1 - by_hand), 1))
    assert all(s["stratum"].startswith(("kept:", "rejected:")) and 0 < float(s["inclusion_probability"]) <= 1
               for s in sample.values())
    # the jury's k-of-n decision against people
    ids = [pid for pid in sample if decided[pid] is not None]
    jury = ["benign" if sample[pid]["source"] == "kept" else "harmful" for pid in ids]
    assert report["jury"]["kappa"]["decision"] == pytest.approx(
        cohen_kappa_score([decided[p] for p in ids], jury))
    # agreement: Krippendorff's alpha over the items labelled more than once
    multi = sorted(pid for pid, v in labels.items() if len(v) > 1)
    raters = ["annotator_1", "annotator_2", "label-studio:7"]
    codes = {"benign": 0, "harmful": 1, "unsure": 2}
    data = np.array([[codes[labels[u][r]] if r in labels[u] else np.nan for u in multi] for r in raters])
    assert report["agreement"]["krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    disagreed = {d["prompt_id"] for d in report["agreement"]["disagreements"]}
    assert disagreed == set(labelled["shared"][:3])
    pair = next(p for p in report["agreement"]["cohen_kappa_pairs"]
                if p["annotators"] == ["annotator_1", "annotator_2"])
    common = [u for u in multi if "annotator_1" in labels[u] and "annotator_2" in labels[u]]
    assert pair["kappa"] == pytest.approx(cohen_kappa_score([labels[u]["annotator_1"] for u in common],
                                                            [labels[u]["annotator_2"] for u in common]))
    assert report["agreement"]["fleiss_kappa"]["items"] == len(labelled["shared"])
    assert report["ambiguity"]["ratings"] == report["labels"]["rows"]
    # printed, carded, verified; the data rows are the base's, byte for byte
    assert "benign precision of kept prompts" in out and "Krippendorff's alpha" in out
    card = (new / "README.md").read_text()
    assert "## Validation" in card and "harmful left" in card and "v1" in card
    assert f"{by_hand:.1%} (90% CI" in card and "design-weighted" in card
    for name in ("prompts.jsonl", "rejected.jsonl", "prompts.parquet", "validation_sample.csv",
                 "data/self_harm.jsonl", "taxonomy.json"):
        assert (new / name).read_bytes() == (snap / name).read_bytes()
    manifest = load_manifest(new)
    assert manifest.kind == "validation" and manifest.base.digest == load_manifest(snap).digest
    assert main(["verify", str(new)]) == 0
    # provenance shows every human label of a prompt, with the file it came from
    shared = labelled["shared"][0]
    capsys.readouterr()
    assert main(["provenance", shared, "--outputs", str(snap.parent.parent), "--snapshot", str(new),
                 "--json"]) == 0
    human = json.loads(capsys.readouterr().out)["human_labels"]
    mine = [h for h in human if h["snapshot"] == "v1-validated"]
    assert sorted((h["annotator"], h["label"]) for h in mine) == sorted(labels[shared].items())
    assert any(h["file"].startswith("export.json (task ") for h in mine)


def test_an_edited_report_fails_verify(snap, labelled, tmp_path, capsys):
    files = [str(p) for p in labelled["files"].values()]
    name = f"edited-{tmp_path.name}"
    assert main(["validate", str(snap), *files, "--name", name]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(snap.parent / name, copy)
    path = copy / "validation" / "report.json"
    report = json.loads(path.read_text())
    report["precision"]["overall"]["benign"] += 1
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    data = path.read_bytes()
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    manifest["files"]["validation/report.json"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                   "bytes": len(data)}
    (copy / "MANIFEST.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 1
    assert "is not the report that validation/labels.jsonl gives" in capsys.readouterr().err


OTHER = "sha256:" + "1" * 64  # another snapshot's digest


def _bad_csv(labelled, tmp_path, change) -> Path:
    rows = csv_rows(labelled["files"]["annotator_1"])
    change(rows)
    path = tmp_path / "bad.csv"
    _write(path, rows)
    return path


def _other_config_export(labelled, tmp_path) -> Path:
    export = json.loads(labelled["files"]["annotator_3"].read_text())
    export[0]["annotations"][0]["result"][0]["from_name"] = "sentiment"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(export))
    return path


def _twice(labelled, tmp_path) -> Path:
    rows = csv_rows(labelled["files"]["annotator_1"])
    rows.append({**rows[0], "label": flip(rows[0]["label"].strip().lower())})
    path = tmp_path / "twice.csv"
    _write(path, rows)
    return path


def _empty(labelled, tmp_path) -> Path:
    path = tmp_path / "empty.csv"
    path.write_text("")
    return path


def _malformed(labelled, tmp_path) -> Path:
    path = tmp_path / "export.json"
    path.write_text('[{"data": ')
    return path


def _two_formats(labelled, tmp_path) -> list[Path]:
    """A CSV whose annotator has the id Label Studio's annotator 7 has, beside that export."""
    return [labelled["files"]["annotator_3"],
            _bad_csv(labelled, tmp_path, lambda rows: [r.update(annotator="label-studio:7") for r in rows])]


@pytest.mark.parametrize(("make", "message"), [
    (lambda lab, tmp: _bad_csv(lab, tmp, lambda rows: rows[0].update(prompt_id="0" * 16)),
     "is not in the snapshot's validation sample"),
    (lambda lab, tmp: _bad_csv(lab, tmp, lambda rows: rows[0].update(label="maybe")),
     "label 'maybe' is not one of benign, harmful, unsure"),
    (_twice, "labelled item"),
    (lambda lab, tmp: _bad_csv(lab, tmp, lambda rows: [r.update(snapshot=OTHER) for r in rows]),
     "the labels belong to snapshot sha256:111"),
    (_empty, "has no prompt_id, label column"),
    (_malformed, "is not valid JSON"),
    (_other_config_export, "an export of another labeling config"),
    (lambda lab, tmp: _bad_csv(lab, tmp, lambda rows: [r.update(label="") for r in rows]), "no labels"),
    (_two_formats, "annotator 'label-studio:7' also labelled in export.json, a file of the other format"),
])
def test_bad_labels_exit_2_and_change_nothing(snap, labelled, tmp_path, capsys, make, message):
    before = sorted(p.name for p in snap.parent.iterdir())
    paths = make(labelled, tmp_path)
    paths = paths if isinstance(paths, list) else [paths]
    assert main(["validate", str(snap), *map(str, paths), "--name", "never"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and "fix:" in err and "Traceback" not in err
    assert sorted(p.name for p in snap.parent.iterdir()) == before


def test_an_existing_name_is_refused_before_reading_labels(snap, labelled, capsys):
    assert main(["validate", str(snap), str(labelled["files"]["annotator_1"]), "--name", "v1"]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_downloaded_copy_is_validated_into_a_snapshot_beside_it(snap, labelled, tmp_path, capsys):
    """A snapshot outside any outputs/snapshots/ (a Hub download) gets its validation
    snapshot beside it, in the same directory, and nowhere else."""
    copy = tmp_path / "downloads" / "hub-bench"
    shutil.copytree(snap, copy)
    files = [str(p) for p in labelled["files"].values()]
    assert main(["validate", str(copy), *files, "--name", "hub-validated"]) == 0
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == ["hub-bench", "hub-validated"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]
    assert main(["verify", str(tmp_path / "downloads" / "hub-validated")]) == 0
    assert main(["validate", str(copy), *files, "--name", "hub-validated"]) == 2
    assert "a snapshot with this name already exists" in capsys.readouterr().err


def test_gate_moves_what_people_call_harmful_and_lists_weak_strata(snap, labelled, capsys):
    files = [str(p) for p in labelled["files"].values()]
    assert main(["validate", str(snap), *files, "--name", "v1-gated", "--gate"]) == 0
    out = capsys.readouterr().out
    new = snap.parent / "v1-gated"
    labels = _labels(labelled)
    sample = {s["id"]: s for s in read_sample(snap)}
    harmful = {pid for pid, votes in labels.items() if sample[pid]["source"] == "kept"
               and Counter(votes.values())["harmful"] > Counter(votes.values())["benign"]}
    assert harmful  # the scripted labels call some kept prompts harmful
    kept = [json.loads(line) for line in (new / "prompts.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (new / "rejected.jsonl").read_text().splitlines()]
    base_kept = [json.loads(line) for line in (snap / "prompts.jsonl").read_text().splitlines()]
    assert {r["id"] for r in kept} == {r["id"] for r in base_kept} - harmful
    assert {r["id"] for r in rejected if r["reason"] == "human_harmful"} == harmful
    moved = [r for r in rejected if r["reason"] == "human_harmful"]
    assert all({**r, "reason": None} in base_kept for r in moved)  # nothing else about them changed
    assert not any(r["id"] in harmful for f in (new / "data").glob("*.jsonl")
                   for r in map(json.loads, f.read_text().splitlines()))
    assert not any(i in harmful for f in (new / "data").glob("*.parquet")
                   for i in pq.read_table(f, columns=["id"]).column("id").to_pylist())
    counts = load_manifest(new).counts
    assert sum(c.get("human_harmful", 0) for c in counts.rejected.values()) == len(harmful)
    assert sum(sum(c.values()) for c in counts.kept.values()) == len(kept)
    assert f"gate: {len(harmful)} kept prompts" in out
    assert "below validation.min_precision (90%)" in out  # every stratum here is weak: listed, not dropped
    report = json.loads((new / "validation" / "report.json").read_text())
    listed = {(b["category"], b["level"]) for b in report["precision"]["below_min_precision"]}
    assert listed and listed <= {(r["category"], r["level"]) for r in base_kept}
    assert f"Gated: {len(harmful)} kept prompts" in (new / "README.md").read_text()
    assert main(["verify", str(new)]) == 0


def test_dawid_skene_weighs_annotators_flags_a_careless_one_and_gates_by_its_labels(
        snap, labelled, tmp_path, capsys):
    """A fourth annotator answers the opposite of the truth on every item: Dawid-Skene
    (crowd-kit) estimates them far below the others and flags them, labels the items the
    majority leaves tied, and the gate and verify follow its labels."""
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    careless = tmp_path / "annotator_4.csv"
    rows = [{"prompt_id": s["id"], "annotator": "annotator_4", "label": flip(truth(s["id"]))}
            for s in read_sample(snap)]
    _write(careless, rows)
    files = [*map(str, labelled["files"].values()), str(careless)]
    args = ["--name", "v1-ds", "--aggregate", "dawid-skene", "--gate"]
    assert main(["validate", str(snap), *files, *args]) == 0
    out = capsys.readouterr().out
    new = snap.parent / "v1-ds"
    report = json.loads((new / "validation" / "report.json").read_text())
    agg = report["aggregation"]
    accuracy = {a["annotator"]: a for a in agg["annotators"]}
    assert accuracy["annotator_4"]["flagged"] and accuracy["annotator_4"]["accuracy"] < 0.5, agg
    assert not any(a["flagged"] for name, a in accuracy.items() if name != "annotator_4"), agg["annotators"]
    assert "annotator_4 accuracy" in out and "flagged" in out
    # independently: crowd-kit on the same labels gives the same item labels
    labels = _labels(labelled)
    for r in rows:
        labels[r["prompt_id"]]["annotator_4"] = r["label"]
    triples = [(pid, a, lab) for pid, v in labels.items() for a, lab in v.items() if lab != "unsure"]
    expected = DawidSkene(n_iter=100).fit_predict(pd.DataFrame(triples, columns=["task", "worker", "label"]))
    differs = {d["prompt_id"]: d for d in agg["differs_from_majority"]}
    assert differs  # annotator_4 ties the majority on the items one other person labelled
    for pid, d in differs.items():
        assert d["dawid_skene"] == expected[pid]
    gated = {r["id"] for r in map(json.loads, (new / "rejected.jsonl").read_text().splitlines())
             if r["reason"] == "human_harmful"}
    sample = {s["id"]: s for s in read_sample(snap)}
    assert gated == {pid for pid in labels if sample[pid]["source"] == "kept" and expected[pid] == "harmful"}
    assert "Dawid-Skene" in (new / "README.md").read_text()
    assert main(["verify", str(new)]) == 0


def test_calibrate_on_labels_weighs_the_jurors_by_the_design(snap, labelled, capsys):
    """`orsc calibrate --labels`: each juror's recall of what people call harmful, each item
    at its stratum's weight N/m, equals scikit-learn's weighted recall; no model is called."""
    from sklearn.metrics import recall_score

    files = [str(p) for p in labelled["files"].values()]
    assert main(["validate", str(snap), *files, "--name", "v1-cal"]) == 0
    capsys.readouterr()
    new = snap.parent / "v1-cal"
    assert main(["calibrate", "--labels", str(new), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = _labels(labelled)

    def major(votes: dict[str, str]) -> str | None:
        c = Counter(v for v in votes.values() if v != "unsure")
        return None if c["benign"] == c["harmful"] else max(c, key=c.get)

    sample = {s["id"]: s for s in read_sample(snap)}
    decided = {pid: major(v) for pid, v in labels.items() if major(v) is not None}
    stratum = {pid: sample[pid]["stratum"] for pid in decided}
    drawn = Counter(s["stratum"] for s in sample.values())
    size = {s["stratum"]: round(drawn[s["stratum"]] / float(s["inclusion_probability"]))
            for s in sample.values()}
    answered = Counter(stratum.values())
    weight = {pid: size[stratum[pid]] / answered[stratum[pid]] for pid in decided}  # N_h / decided in h
    rows = {r["id"]: r for f in ("prompts.jsonl", "rejected.jsonl")
            for r in map(json.loads, (new / f).read_text().splitlines())}
    ids = sorted(decided)
    for juror in ("judge_1", "judge_2", "judge_3"):
        said = {pid: next(v["label"] for v in rows[pid]["votes"] if v["juror"] == juror) for pid in ids}
        voted = [pid for pid in ids if said[pid] in ("benign", "harmful")]
        expected = recall_score([decided[p] for p in voted], [said[p] for p in voted], pos_label="harmful",
                                sample_weight=[weight[p] for p in voted])
        assert report["jurors"][juror]["recall"]["estimate"] == pytest.approx(expected, abs=1e-6)
    rule = report["jurors"]["rule"]
    jury = {pid: "benign" if sample[pid]["source"] == "kept" else "harmful" for pid in ids}
    assert rule["recall"]["estimate"] == pytest.approx(recall_score(
        [decided[p] for p in ids], [jury[p] for p in ids], pos_label="harmful",
        sample_weight=[weight[p] for p in ids]), abs=1e-6)
    assert rule["items"] == report["items"] == len(ids)
    # --fit needs a score juror; this jury gives verdicts only
    assert main(["calibrate", "--labels", str(new), "--fit"]) == 2
    assert "needs a juror that scores" in capsys.readouterr().err
    assert main(["calibrate", "--labels", str(snap)]) == 2  # not a validation snapshot
    assert "without people's labels" in capsys.readouterr().err


def test_a_validation_snapshot_copies_its_base_without_a_clones_metadata(tmp_path):
    """Validating a cloned snapshot: the new snapshot holds the base's files, not the
    clone's .git/, .gitattributes or .cache/huggingface/ (nor the base's MANIFEST)."""
    from health_orsc.validation.validity import base_files_only

    base = tmp_path / "base"
    for rel in ("MANIFEST.json", "prompts.jsonl", "data/self_harm.jsonl", ".gitattributes", ".git/HEAD",
                ".cache/huggingface/download/x", ".cache/keep.txt", "data/.git/x"):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(rel)
    shutil.copytree(base, tmp_path / "copy", ignore=base_files_only(base))
    copied = sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*")
                    if p.is_file())
    assert copied == [".cache/keep.txt", "data/.git/x", "data/self_harm.jsonl", "prompts.jsonl"]
