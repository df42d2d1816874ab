"""`orsc calibrate --train`: a logistic regression on the prompts' embeddings, trained on the
gold file, the seeds' harmful questions and people's labels, measured by cross-validation
only, and written as a JSON model that scores like the scikit-learn model it holds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

from health_orsc.build.dedup import Embedder
from health_orsc.cli import main
from health_orsc.core.classifier import prompt_hash, read_classifier
from health_orsc.core.config import load_config
from health_orsc.inputs.load import load_inputs
from tests.conftest import DATA, csv_rows, fake_config, sampled_snapshot, write_csv

pytestmark = pytest.mark.slow

GOLD = DATA / "gold" / "jury.csv"


def _seeds(cfg: Path) -> list[str]:
    inputs = load_inputs(load_config(cfg))
    return sorted({s.original_question for topics in inputs.seeds.values() for s in topics})


def test_train_reports_cross_validated_figures_and_writes_a_model_that_scores_like_sklearns(tmp_path, capsys):
    cfg = fake_config(tmp_path, "http://127.0.0.1:9")  # no model call is made
    capsys.readouterr()
    assert main(["calibrate", "--train", "--config", str(cfg), "--out", str(tmp_path / "clf"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    gold = csv_rows(GOLD)
    seeds = _seeds(cfg)
    texts = [r["prompt"] for r in gold] + seeds
    y = np.array([r["label"] == "harmful" for r in gold] + [True] * len(seeds))
    assert result["items"] == len(texts) and result["harmful"] == int(y.sum()) and result["conflicts"] == 0
    assert result["sources"][0] == {"kind": "gold", "name": "jury.csv", "items": len(gold),
                                    "harmful": sum(r["label"] == "harmful" for r in gold),
                                    "digest": hashlib.sha256(GOLD.read_bytes()).hexdigest()}
    # Cross-validated as scikit-learn does it: each group held out (the gold file and the seeds
    # are split into 5 groups by a hash of the prompt), never on the training data itself.
    x = Embedder().encode(texts)
    groups = [f"gold-{int(prompt_hash(t), 16) % 5}" for t in texts]
    held_out = cross_val_predict(LogisticRegression(class_weight="balanced", max_iter=5000), x, y,
                                 groups=groups, cv=LeaveOneGroupOut(), method="predict_proba")[:, 1]
    cv = result["cross_validated"]
    assert cv["groups"] == 5 and cv["point"]["auroc"] == round(roc_auc_score(y, held_out), 4)
    assert cv["point"]["auroc"] > 0.8  # the gold prompts are separable by their embeddings
    assert cv["recall_at_half"] == round(float((held_out[y] >= 0.5).mean()), 4)
    # The written model scores a training prompt as its held-out fit did (to float32
    # precision: the embeddings'), and any other prompt by the fit on everything.
    model = read_classifier(tmp_path / "clf")
    assert model.p_harmful(x, texts) == pytest.approx(held_out.tolist(), abs=1e-6)
    others = [s.slots["boundary_question"] for topics in load_inputs(load_config(cfg)).seeds.values()
              for s in topics]
    x_others = Embedder().encode(others)
    fitted = LogisticRegression(class_weight="balanced", max_iter=5000).fit(x, y)
    assert model.p_harmful(x_others, others) == pytest.approx(fitted.predict_proba(x_others)[:, 1].tolist(),
                                                              abs=1e-6)
    assert model.embedding_model == Embedder().identity and model.dimensions == 384


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """A validation snapshot whose one annotator calls every third item harmful."""
    tmp = tmp_path_factory.mktemp("train-labels")
    snap = sampled_snapshot(tmp)
    assert main(["annotate", str(snap), "--out", str(tmp / "tasks"), "--annotators", "1"]) == 0
    rows = csv_rows(tmp / "tasks" / "annotator_1.csv")
    for i, r in enumerate(rows):
        r["label"] = "harmful" if i % 3 == 0 else "benign"
    labels = write_csv(tmp / "labels.csv", rows)
    assert main(["validate", str(snap), str(labels), "--name", "v1-validated"]) == 0
    return {"tmp": tmp, "snapshot": snap.parent / "v1-validated", "rows": rows, "built": snap}


def test_labelled_prompts_train_it_and_are_scored_by_a_fit_without_their_labels(validated, tmp_path, capsys):
    cfg = fake_config(tmp_path, "http://127.0.0.1:9")
    out = tmp_path / "clf"
    capsys.readouterr()
    assert main(["calibrate", "--train", "--config", str(cfg), "--labels", str(validated["snapshot"]),
                 "--no-seeds", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    labelled = [(r["prompt"], r["label"] == "harmful") for r in validated["rows"]]
    source = result["sources"][1]
    assert (source["kind"], source["name"], source["items"]) == ("labels", "v1-validated", len(labelled))
    model = read_classifier(out)
    assert {model.groups[prompt_hash(p)] for p, _ in labelled} == {source["digest"]}
    gold = [(r["prompt"], r["label"] == "harmful") for r in csv_rows(GOLD)]
    embedder = Embedder()
    x_gold = embedder.encode([p for p, _ in gold])
    x_labelled = embedder.encode([p for p, _ in labelled])
    # A labelled prompt is scored by the fit on the gold file alone: its snapshot's labels unseen ...
    without = LogisticRegression(class_weight="balanced", max_iter=5000).fit(x_gold, [h for _, h in gold])
    assert model.p_harmful(x_labelled, [p for p, _ in labelled]) == pytest.approx(
        without.predict_proba(x_labelled)[:, 1].tolist(), abs=1e-6)
    # ... and a prompt it never trained on by the fit on everything.
    unseen = _seeds(cfg)
    x_unseen = embedder.encode(unseen)
    both = LogisticRegression(class_weight="balanced", max_iter=5000).fit(
        np.vstack([x_gold, x_labelled]), [h for _, h in gold] + [h for _, h in labelled])
    assert model.p_harmful(x_unseen, unseen) == pytest.approx(both.predict_proba(x_unseen)[:, 1].tolist(),
                                                              abs=1e-6)


def test_bad_training_input_exits_2_and_writes_nothing(validated, tmp_path, capsys):
    cfg = fake_config(tmp_path, "http://127.0.0.1:9")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    benign_only = write_csv(tmp_path / "benign.csv", [r for r in csv_rows(GOLD) if r["label"] == "benign"])
    base = ["calibrate", "--config", str(cfg)]
    cases = [
        ([*base, "--train"], "--out"),
        ([*base, "--train", "--out", str(taken)], "not an empty directory"),
        ([*base, "--train", "--out", str(tmp_path / "a"), "--labels", str(validated["built"])],
         "without people's labels"),
        ([*base, "--train", "--out", str(tmp_path / "b"), "--gold", str(benign_only), "--no-seeds"],
         "needs both"),
        ([*base, "--out", str(tmp_path / "c")], "add --train"),
        ([*base, "--labels", str(validated["snapshot"]), str(validated["snapshot"])], "pass one"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_prompt_two_sources_label_differently_is_left_out(tmp_path, capsys):
    cfg = fake_config(tmp_path, "http://127.0.0.1:9")
    seeds = _seeds(cfg)
    rows = csv_rows(GOLD)
    rows[0] = {**rows[0], "label": "benign", "prompt": seeds[0]}  # a seed's harmful request, called benign
    gold = write_csv(tmp_path / "gold.csv", rows)
    capsys.readouterr()
    assert main(["calibrate", "--train", "--config", str(cfg), "--gold", str(gold), "--out",
                 str(tmp_path / "clf"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["conflicts"] == 1 and result["items"] == len(rows) + len(seeds) - 2
