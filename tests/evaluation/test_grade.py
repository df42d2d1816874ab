"""`orsc grade`: the grader and the detector against people's labels on the shipped answer
file, with a scripted grader, checked against scikit-learn computed here."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix

from health_orsc.cli import main
from health_orsc.evaluation.answer import detect_refusal
from tests.conftest import DATA, GRADER, csv_rows, fake_config
from tests.fakes.endpoint import FakeOpenAI

ANSWERS = DATA / "gold" / "answers.csv"
CLASSES = ["full_compliance", "partial_refusal", "full_refusal"]


def answer_rows(path: Path = ANSWERS) -> list[dict]:
    return csv_rows(path)


def scripted_grade(answer: str) -> str:
    """A plausible, imperfect grader: 'but' marks a partial refusal, a refusal opening a full one."""
    if " but " in answer or answer.startswith("I won't"):
        return "partial_refusal"
    return "full_refusal" if detect_refusal(answer) == "full_refusal" else "full_compliance"


def reply(request: dict) -> str:
    answer = re.findall(r"^Answer: (.*)$", request["messages"][-1]["content"], re.M)[-1]
    return json.dumps({"label": scripted_grade(answer), "rationale": "scripted"})


def config(tmp_path: Path, base_url: str) -> Path:
    return fake_config(tmp_path, base_url, categories=None, roles={"grader": GRADER})


def test_the_shipped_answer_file_covers_every_class_and_category():
    rows = answer_rows()
    taxonomy = yaml.safe_load((DATA / "seeds" / "taxonomy.yaml").read_text())
    assert {r["category"] for r in rows} == {c["id"] for c in taxonomy["categories"]}
    assert all(sum(r["label"] == c for r in rows) >= 10 for c in CLASSES)
    assert len({r["id"] for r in rows}) == len(rows)


def test_grade_reports_what_sklearn_computes(tmp_path, capsys):
    rows = answer_rows()
    server = FakeOpenAI(reply).start()
    try:
        cfg = config(tmp_path, server.base_url)
        assert main(["grade", "--config", str(cfg), "--answers", str(ANSWERS), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert len(server.requests) == len(rows)  # one grader call per answer
        assert main(["grade", "--config", str(cfg), "--answers", str(ANSWERS)]) == 0  # from the cache
        printed = capsys.readouterr().out
        assert len(server.requests) == len(rows)
    finally:
        server.stop()
    truth = [r["label"] for r in rows]
    for who, predicted in (("grader", [scripted_grade(r["answer"]) for r in rows]),
                           ("detector", [detect_refusal(r["answer"]) for r in rows])):
        got = report[who]
        assert got["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-4)
        assert got["kappa"] == pytest.approx(cohen_kappa_score(truth, predicted), abs=1e-4)
        assert got["confusion"] == confusion_matrix(truth, predicted, labels=CLASSES).tolist()
    # the detector never says partial, so it misses every partial refusal
    assert report["detector"]["per_class"]["partial_refusal"]["recall"] == 0.0
    assert report["labelled"] == len(rows) and report["ungraded"] == 0
    assert "grader against 42 people's labels" in printed and "detector against" in printed


def test_a_bad_label_exits_2_before_any_call(tmp_path, capsys, fake_llm):
    rows = answer_rows()[:3]
    rows[2]["label"] = "refused"
    bad = tmp_path / "answers.csv"
    with bad.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = config(tmp_path, fake_llm.base_url)
    assert main(["grade", "--config", str(cfg), "--answers", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "row 4" in err and "'refused' is not one of" in err and "fix:" in err
    assert fake_llm.requests == []
