"""`orsc calibrate`: every juror and the k-of-n rule measured on labelled prompts, against
scripted jurors whose answers are known, and the shipped gold file's shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_recall_fscore_support

from pipeline.cli import main
from tests.conftest import REPO, fake_config
from tests.fake_openai import FakeOpenAI

GOLD = REPO / "gold" / "jury.csv"


def gold_rows(path: Path = GOLD) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_shipped_gold_file_covers_every_category_and_is_not_the_seeds():
    rows = gold_rows()
    taxonomy = yaml.safe_load((REPO / "seeds" / "taxonomy.yaml").read_text())
    for category in (c["id"] for c in taxonomy["categories"]):
        labels = [r["label"] for r in rows if r["category"] == category]
        assert labels.count("benign") >= 10 and labels.count("harmful") >= 10, category
    seeds = "\n".join(p.read_text() for p in (REPO / "seeds").glob("*.yaml")).lower()
    assert not [r["id"] for r in rows if r["prompt"].lower() in seeds]
    assert len({r["id"] for r in rows}) == len(rows)


def scripted(rows: list[dict]):
    """judge-1 calls everything benign; judge-2 is right every time; judge-3 is right but
    for every fourth harmful prompt, which it calls benign."""
    truth = {r["prompt"]: r["label"] for r in rows}
    missed = {r["prompt"] for r in rows if r["label"] == "harmful"}
    missed = set(sorted(missed)[::4])

    def reply(request: dict) -> str:
        text = request["messages"][-1]["content"]
        prompt = next(p for p in truth if p in text)
        label = {"judge-1": "benign", "judge-2": truth[prompt],
                 "judge-3": "benign" if prompt in missed else truth[prompt]}[request["model"]]
        return json.dumps({"label": label, "rationale": "scripted"})

    def expected(model: str) -> list[str]:
        return [{"judge-1": "benign", "judge-2": r["label"],
                 "judge-3": "benign" if r["prompt"] in missed else r["label"]}[model] for r in rows]

    return reply, expected


def test_calibrate_reports_what_sklearn_computes_from_the_votes(tmp_path, capsys):
    rows = [r for r in gold_rows() if r["category"] in ("self_harm", "drug_abuse")]
    reply, expected = scripted(rows)
    server = FakeOpenAI(reply).start()
    try:
        cfg = fake_config(tmp_path, server.base_url)
        assert main(["calibrate", "--config", str(cfg), "--gold", str(GOLD), "--json"]) == 2
        assert "not among the config's categories" in capsys.readouterr().err  # the rest of the file
        gold = tmp_path / "gold.csv"
        with gold.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        assert main(["calibrate", "--config", str(cfg), "--gold", str(gold), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        calls = len(server.requests)
        assert calls == 3 * len(rows)
        # a second run is answered from the request cache
        assert main(["calibrate", "--config", str(cfg), "--gold", str(gold)]) == 0
        printed = capsys.readouterr().out
        assert len(server.requests) == calls
    finally:
        server.stop()
    truth = [r["label"] for r in rows]
    votes = {f"judge_{i}": expected(f"judge-{i}") for i in (1, 2, 3)}
    # the 2-of-3 rule: benign when two jurors say so
    votes["rule"] = ["benign" if sum(v[k] == "benign" for v in votes.values()) >= 2 else "harmful"
                     for k in range(len(rows))]
    for juror, predicted in votes.items():
        got = report["jurors"][juror]
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=["benign", "harmful"],
                                                     zero_division=0)
        assert got["confusion"] == confusion_matrix(truth, predicted, labels=["benign", "harmful"]).tolist()
        assert got["recall"] == pytest.approx(r[1], abs=1e-4)
        assert got["specificity"] == pytest.approx(r[0], abs=1e-4)
        if predicted.count("harmful"):
            assert got["precision"] == pytest.approx(p[1], abs=1e-4)
            assert got["f1"] == pytest.approx(f[1], abs=1e-4)
        if len(set(predicted)) > 1:
            assert got["kappa"] == pytest.approx(cohen_kappa_score(truth, predicted))
    assert report["jurors"]["judge_1"]["recall"] == 0.0 and report["jurors"]["judge_1"]["precision"] is None
    assert report["jurors"]["judge_2"]["kappa"] == 1.0
    assert "k-of-n rule (2 benign)" in printed and "specificity" in printed
    assert f"model calls: 0 (request cache hits: {calls})" in printed


@pytest.mark.parametrize(("row", "message"), [
    ({"label": "safe"}, "label 'safe' is not benign or harmful"),
    ({"category": "astrology"}, "category 'astrology' is not in the taxonomy"),
    ({"id": "sh-b01"}, "repeats row 2"),
    ({"prompt": ""}, "prompt is empty"),
])
def test_a_bad_gold_file_exits_2_before_any_call(tmp_path, capsys, fake_llm, row, message):
    rows = gold_rows()[:2]
    rows[1] = {**rows[1], **row}
    gold = tmp_path / "gold.csv"
    with gold.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = fake_config(tmp_path, fake_llm.base_url, categories=None)
    assert main(["calibrate", "--config", str(cfg), "--gold", str(gold)]) == 2
    err = capsys.readouterr().err
    assert message in err and "row 3" in err and "fix:" in err
    assert fake_llm.requests == []


def test_a_gold_file_without_its_columns_is_refused(tmp_path, capsys, fake_llm):
    gold = tmp_path / "gold.csv"
    gold.write_text("question,answer\nhi,benign\n")
    cfg = fake_config(tmp_path, fake_llm.base_url)
    assert main(["calibrate", "--config", str(cfg), "--gold", str(gold)]) == 2
    assert "has no id, category, label, prompt column" in capsys.readouterr().err
