"""`orsc annotate`: blind task files for people, as CSV or Label Studio imports."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter

import pytest
import yaml

from health_orsc.cli import main
from health_orsc.snapshot.store import load_manifest, read_sample
from tests.conftest import DATA, csv_rows, sampled_snapshot

pytestmark = pytest.mark.slow

# What would un-blind an annotator: the jury's votes, the item's source, its intended level.
FORBIDDEN = {"benign_votes", "n_jurors", "votes", "source", "level", "reason", "kept", "rejected"}


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    return sampled_snapshot(tmp_path_factory.mktemp("annotate"))


def test_csv_tasks_are_blind_with_overlap_and_own_order(snap, tmp_path, capsys):
    sample = read_sample(snap)
    assert Counter(r["source"] for r in sample) == {"kept": 12, "rejected": 4}
    out = tmp_path / "tasks"
    assert main(["annotate", str(snap), "--out", str(out)]) == 0  # defaults from the snapshot's config
    printed = capsys.readouterr().out
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["annotator_1.csv", "annotator_2.csv", "annotator_3.csv"]
    per = {f.stem: csv_rows(f) for f in files}
    columns = list(per["annotator_1"][0])
    assert columns == ["prompt_id", "snapshot", "annotator", "category", "harm_definition",
                       "benign_boundary", "prompt", "label", "ambiguity", "notes"]
    assert not FORBIDDEN & set(columns)
    # 4 items go to everyone; the other 12 once each: 12 + 12 = 24 labels
    seen = Counter(r["prompt_id"] for rows in per.values() for r in rows)
    assert set(seen) == {r["id"] for r in sample}
    assert sorted(Counter(seen.values()).items()) == [(1, 12), (3, 4)]
    assert "16 items for 3 annotators: 4 labelled by every one, 12 by one each; 24 labels in all" in printed
    # each annotator their own order of the shared items
    shared = [i for i, n in seen.items() if n == 3]
    orders = {name: [r["prompt_id"] for r in rows if r["prompt_id"] in shared] for name, rows in per.items()}
    assert len({tuple(o) for o in orders.values()}) > 1
    # guidance from the taxonomy the snapshot was built under; answers empty; the snapshot named
    taxonomy_file = yaml.safe_load((DATA / "seeds" / "taxonomy.yaml").read_text())
    taxonomy = {c["name"]: c for c in taxonomy_file["categories"]}
    digest = load_manifest(snap).digest
    prompts = {r["id"]: r["prompt"] for r in sample}
    for name, rows in per.items():
        for r in rows:
            assert r["harm_definition"] == taxonomy[r["category"]]["harm_definition"]
            assert r["benign_boundary"] == taxonomy[r["category"]]["benign_boundary"]
            assert r["prompt"] == prompts[r["prompt_id"]] and r["snapshot"] == digest
            assert r["annotator"] == name and r["label"] == r["ambiguity"] == r["notes"] == ""


def test_label_studio_config_and_tasks_import_as_they_are(snap, tmp_path):
    out = tmp_path / "ls"
    assert main(["annotate", str(snap), "--out", str(out), "--format", "label-studio",
                 "--annotators", "2", "--overlap", "16"]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["annotator_1.tasks.json", "annotator_2.tasks.json",
                                                     "label_config.xml"]
    config = (out / "label_config.xml").read_text()
    root = ET.fromstring(config)
    assert root.tag == "View"
    texts = {t.get("name") for t in root.iter("Text")}
    choices = {c.get("name"): c for c in root.iter("Choices")}
    label = choices["label"]
    assert label.get("toName") in texts and label.get("choice") == "single"
    assert label.get("required") == "true"
    assert [c.get("value") for c in label.iter("Choice")] == ["benign", "harmful", "unsure"]
    assert [c.get("alias") for c in choices["ambiguity"].iter("Choice")] == ["1", "2", "3"]
    variables = set(re.findall(r"\$(\w+)", config))
    for name in ("annotator_1", "annotator_2"):
        tasks = json.loads((out / f"{name}.tasks.json").read_text())
        assert len(tasks) == 16  # --overlap 16: everyone labels everything
        for task in tasks:
            assert set(task) == {"data"}  # no predictions: the jury's votes stay out
            data = task["data"]
            assert "id" not in data and data["prompt_id"]  # `id` is Label Studio's own task id
            assert variables <= set(data)  # every $variable of the config is in the task
            assert not FORBIDDEN & set(data)


@pytest.mark.parametrize(("args", "expected"), [
    (["--overlap", "17"], "--overlap"),
    (["--annotators", "0"], "--annotators"),
    (["--format", "argilla"], None),  # argparse: exit 2, lists the choices
])
def test_bad_arguments_exit_2_and_write_nothing(snap, tmp_path, capsys, args, expected):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) if expected is None else _no_raise():
        assert main(["annotate", str(snap), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    if expected:
        assert expected in err and err.startswith("error:") and "fix:" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_existing_output_is_never_overwritten(snap, tmp_path, capsys):
    out = tmp_path / "tasks"
    out.mkdir()
    (out / "annotator_1.csv").write_text("someone's labels\n")
    assert main(["annotate", str(snap), "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert (out / "annotator_1.csv").read_text() == "someone's labels\n"
    assert [p.name for p in out.iterdir()] == ["annotator_1.csv"]


def test_a_snapshot_that_fails_verify_is_not_annotated(snap, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(snap, copy)
    sample = copy / "validation_sample.csv"
    sample.write_text(sample.read_text().replace("kept", "rejected", 1))
    out = tmp_path / "tasks"
    assert main(["annotate", str(copy), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "fails verification" in err and "validation_sample.csv" in err and "orsc verify" in err
    assert not out.exists()
