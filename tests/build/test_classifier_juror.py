"""A classifier juror (`scoring: classifier`): trained by `orsc calibrate --train`, it votes
in a build without a model call, scores each prompt as the scikit-learn model it holds, is
reported by the jury check like every juror, and is part of the fingerprint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from health_orsc.build.dedup import Embedder
from health_orsc.cli import main
from health_orsc.core.config import load_config
from health_orsc.core.records import content_id
from health_orsc.inputs.load import load_inputs
from health_orsc.snapshot.store import load_manifest, read_jsonl_rows
from tests.conftest import DATA, csv_rows, fake_config, write_csv
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply

pytestmark = pytest.mark.slow

JURY = {"jurors": ["judge_1", "judge_2", "judge_3", "screen"], "min_benign": 3}


def _config(tmp: Path, url: str, **screen) -> Path:
    cfg = fake_config(tmp, url, jury=JURY)
    raw = yaml.safe_load(cfg.read_text())
    raw["roles"]["screen"] = {"scoring": "classifier", "classifier": "clf", "threshold": 0.5, **screen}
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classifier-juror")
    plain = fake_config(tmp, "http://127.0.0.1:9")  # the same inputs, to train with
    assert main(["calibrate", "--train", "--config", str(plain), "--out", str(tmp / "clf")]) == 0
    server = FakeOpenAI(build_reply).start()
    try:
        cfg = _config(tmp, server.base_url)
        assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
        calls = len(server.requests)
    finally:
        server.stop()
    return {"tmp": tmp, "cfg": cfg, "snapshot": tmp / "outputs" / "snapshots" / "v1", "calls": calls}


def test_it_votes_as_the_model_it_holds_with_no_model_call(built):
    snap = built["snapshot"]
    rows = [*read_jsonl_rows(snap / "prompts.jsonl"), *read_jsonl_rows(snap / "rejected.jsonl")]
    judged = [r for r in rows if r["votes"]]
    votes = [next(v for v in r["votes"] if v["juror"] == "screen") for r in judged]
    assert votes and all(v["calls"] == [] for v in votes)
    # The candidates were not training prompts: scored by the fit on the gold file and seeds.
    inputs = load_inputs(load_config(built["cfg"]))
    gold = csv_rows(DATA / "gold" / "jury.csv")
    seeds = sorted({s.original_question for topics in inputs.seeds.values() for s in topics})
    embedder = Embedder()
    x = embedder.encode([r["prompt"] for r in gold] + seeds)
    y = [r["label"] == "harmful" for r in gold] + [True] * len(seeds)
    fitted = LogisticRegression(class_weight="balanced", max_iter=5000).fit(x, y)
    expected = fitted.predict_proba(embedder.encode([r["prompt"] for r in judged]))[:, 1]
    assert [v["p_harmful"] for v in votes] == pytest.approx(np.round(expected, 4).tolist(), abs=2e-4)
    assert [v["label"] for v in votes] == ["harmful" if p >= 0.5 else "benign" for p in
                                           (v["p_harmful"] for v in votes)]
    manifest = load_manifest(snap)
    assert "screen" in manifest.jury_calibration  # the jury check asked it too
    assert manifest.models["screen"] == {"scoring": "classifier", "classifier": "clf", "threshold": 0.5}
    digest = hashlib.sha256((built["tmp"] / "clf" / "classifier.json").read_bytes()).hexdigest()
    for category in manifest.categories:
        assert manifest.fingerprint_components[category]["classifiers"] == content_id({"screen": digest})
    assert main(["verify", str(snap)]) == 0


def test_the_rule_counts_its_vote(built):
    rows = [*read_jsonl_rows(built["snapshot"] / "prompts.jsonl"),
            *read_jsonl_rows(built["snapshot"] / "rejected.jsonl")]
    for r in rows:
        if r["votes"] and all(v["label"] != "unparseable" for v in r["votes"]):
            benign = sum(v["label"] == "benign" for v in r["votes"])
            assert (r["reason"] is None) == (benign >= JURY["min_benign"]), r["id"]


def test_a_bad_classifier_juror_exits_2(built, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    raw = json.loads((built["tmp"] / "clf" / "classifier.json").read_text())
    (other / "clf").mkdir()
    (other / "clf" / "classifier.json").write_text(json.dumps({**raw, "embedding_model": "another@model"}))
    cases = [
        (_config(tmp_path / "a", "http://127.0.0.1:9"), "roles.screen.classifier"),  # no model there
        (_config(other, "http://127.0.0.1:9"), "was trained on the embeddings of another@model"),
        (_config(tmp_path / "c", "http://127.0.0.1:9", endpoint="fake"), "makes no model call"),
    ]
    for cfg, message in cases:
        capsys.readouterr()
        assert main(["build", "--config", str(cfg), "--name", "x"]) == 2, message
        assert message in capsys.readouterr().err


def test_calibrate_measures_it_on_the_gold_file_it_was_trained_on_only_held_out(built, capsys):
    """Each gold prompt is scored by the fit without its group: the AUROC is the
    cross-validated one, not the fit's on its own training data."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

    from health_orsc.core.classifier import prompt_hash

    gold = csv_rows(DATA / "gold" / "jury.csv")
    ours = [i for i, r in enumerate(gold) if r["category"] in ("self_harm", "drug_abuse")]
    subset = write_csv(built["tmp"] / "gold-2.csv", [gold[i] for i in ours])  # the config's categories
    server = FakeOpenAI(build_reply).start()
    try:
        cfg = _config(built["tmp"] / "calibrate", server.base_url, classifier=str(built["tmp"] / "clf"))
        capsys.readouterr()
        assert main(["calibrate", "--config", str(cfg), "--gold", str(subset), "--fit", "--json"]) == 0
    finally:
        server.stop()
    report = json.loads(capsys.readouterr().out)
    assert report["model_calls"] + report["cache_hits"] == 3 * len(ours)  # the classifier made none
    inputs = load_inputs(load_config(built["cfg"]))
    seeds = sorted({s.original_question for topics in inputs.seeds.values() for s in topics})
    texts = [r["prompt"] for r in gold] + seeds
    y = np.array([r["label"] == "harmful" for r in gold] + [True] * len(seeds))
    held_out = cross_val_predict(LogisticRegression(class_weight="balanced", max_iter=5000),
                                 Embedder().encode(texts), y, cv=LeaveOneGroupOut(), method="predict_proba",
                                 groups=[f"gold-{int(prompt_hash(t), 16) % 5}" for t in texts])[:, 1]
    fit = report["fit"]["screen"]
    assert fit["auroc"] == pytest.approx(roc_auc_score(y[ours], held_out[ours]), abs=2e-3)
    line = fit["config_line"]
    assert f"classifier: {built['tmp'] / 'clf'}" in line and "endpoint" not in line
