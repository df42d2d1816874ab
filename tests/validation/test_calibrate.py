"""`orsc calibrate`: every juror and the k-of-n rule measured on labelled prompts, against
scripted jurors whose answers are known, and the shipped gold file's shape."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml
from sklearn.metrics import (
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from health_orsc.cli import main
from tests.conftest import DATA, csv_rows, fake_config
from tests.fakes.endpoint import FakeOpenAI

GOLD = DATA / "gold" / "jury.csv"


def gold_rows(path: Path = GOLD) -> list[dict]:
    return csv_rows(path)


def test_the_shipped_gold_file_covers_every_category_and_is_not_the_seeds():
    rows = gold_rows()
    taxonomy = yaml.safe_load((DATA / "seeds" / "taxonomy.yaml").read_text())
    for category in (c["id"] for c in taxonomy["categories"]):
        labels = [r["label"] for r in rows if r["category"] == category]
        assert labels.count("benign") >= 10 and labels.count("harmful") >= 10, category
    seeds = "\n".join(p.read_text() for p in (DATA / "seeds").glob("*.yaml")).lower()
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


def score_of(prompt: str, label: str) -> float:
    """A scripted P(harmful): higher for harmful prompts, with overlap (AUROC below 1)."""
    u = int(hashlib.sha256(prompt.encode()).hexdigest()[:4], 16) / 0xFFFF
    return round((0.3 + 0.65 * u) if label == "harmful" else (0.02 + 0.6 * u), 4)


def scored(rows: list[dict]):
    """judge-1 answers one word with token log-probabilities (llama.cpp / OpenAI layout);
    judges 2 and 3 answer JSON verdicts, always benign."""
    truth = {r["prompt"]: r["label"] for r in rows}

    def reply(request: dict):
        text = request["messages"][-1]["content"]
        prompt = next((p for p in truth if p in text), None)
        if request["model"] != "judge-1":
            return json.dumps({"label": "benign", "rationale": "scripted"})
        if prompt is None:  # a build's candidate: benign-leaning
            p = 0.2
        else:
            p = score_of(prompt, truth[prompt])
        top = [{"token": "harm", "logprob": math.log(p)}, {"token": "ben", "logprob": math.log(1 - p)}]
        word = "harmful" if p >= 0.5 else "benign"
        return word, [{"token": word[:4], "logprob": max(t["logprob"] for t in top), "top_logprobs": top}]

    return reply


def score_config(tmp_path: Path, base_url: str, **overrides) -> Path:
    judge_1 = {"endpoint": "fake", "model": "judge-1", "prompt": "harm_definition.j2", "max_tokens": 2,
               "scoring": "logprobs"}
    cfg = fake_config(tmp_path, base_url, **overrides)
    data = yaml.safe_load(cfg.read_text())
    data["roles"]["judge_1"] = judge_1
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def test_fit_chooses_the_threshold_that_reaches_the_target_recall(tmp_path, capsys):
    rows = [r for r in gold_rows() if r["category"] in ("self_harm", "drug_abuse")]
    gold = tmp_path / "gold.csv"
    with gold.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    server = FakeOpenAI(scored(rows)).start()
    try:
        plain = fake_config(tmp_path, server.base_url)
        assert main(["calibrate", "--config", str(plain), "--gold", str(gold), "--fit"]) == 2
        assert "add 'scoring: logprobs'" in capsys.readouterr().err and not server.requests
        cfg = score_config(tmp_path, server.base_url)
        fit = ["calibrate", "--config", str(cfg), "--gold", str(gold), "--fit", "--target-recall", "0.9"]
        assert main([*fit, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert main(fit) == 0  # from the request cache, logprobs included
        printed = capsys.readouterr().out
    finally:
        server.stop()
    asked = [r for r in server.requests if r["model"] == "judge-1"]
    assert asked and all(r["logprobs"] is True and r["top_logprobs"] == 20 for r in asked)
    assert all("Answer with one word: harmful or benign." in r["messages"][0]["content"] for r in asked)
    assert not any("logprobs" in r for r in server.requests if r["model"] != "judge-1")
    # independently: the scripted scores, sklearn's AUROC, and the threshold by brute force
    harmful = [r["label"] == "harmful" for r in rows]
    p = [score_of(r["prompt"], r["label"]) for r in rows]
    pairs = list(zip(p, harmful, strict=True))
    best = max(t for t in p if sum(s >= t for s, h in pairs if h) >= 0.9 * sum(harmful))
    specificity = sum(s < best for s, h in pairs if not h) / harmful.count(False)
    fit = report["fit"]["judge_1"]
    assert fit["auroc"] == pytest.approx(roc_auc_score(harmful, p), abs=1e-4) and fit["auroc"] < 1
    assert fit["threshold"] == best and fit["specificity"] == pytest.approx(specificity, abs=1e-4)
    assert fit["recall"] >= 0.9 and fit["unscored"] == 0
    assert fit["config_line"] == ("judge_1: {endpoint: fake, model: judge-1, max_tokens: 2,"
                                  f" prompt: harm_definition.j2, scoring: logprobs, threshold: {best}}}")
    # at the configured threshold (default 0.5) the votes are the scores' labels
    predicted = ["harmful" if s >= 0.5 else "benign" for s in p]
    assert report["jurors"]["judge_1"]["confusion"] == confusion_matrix(
        [r["label"] for r in rows], predicted, labels=["benign", "harmful"]).tolist()
    assert set(report["fit"]) == {"judge_1"} and "AUROC" in printed and fit["config_line"] in printed


def test_a_score_juror_in_a_build_records_p_harmful_and_verifies(tmp_path, capsys):
    server = FakeOpenAI(scored([])).start()
    try:
        cfg = score_config(tmp_path, server.base_url, categories=["self_harm"])
        data = yaml.safe_load(cfg.read_text())
        data["roles"]["judge_1"]["threshold"] = 0.15  # the build's candidates score 0.2: harmful
        cfg.write_text(yaml.safe_dump(data))
        assert main(["build", "--config", str(cfg), "--name", "scored"]) == 0
    finally:
        server.stop()
    snap = tmp_path / "outputs" / "snapshots" / "scored"
    assert main(["verify", str(snap)]) == 0
    rows = [json.loads(line) for name in ("prompts.jsonl", "rejected.jsonl")
            for line in (snap / name).read_text().splitlines()]
    votes = [v for r in rows for v in r["votes"]]
    scored_votes = [v for v in votes if v["juror"] == "judge_1"]
    assert scored_votes and all(v["p_harmful"] == 0.2 and v["label"] == "harmful" for v in scored_votes)
    assert all(v["rationale"] == "P(harmful) 0.200 >= threshold 0.15" for v in scored_votes)
    assert all("p_harmful" not in v for v in votes if v["juror"] != "judge_1")  # verdict jurors
    manifest = json.loads((snap / "MANIFEST.json").read_text())
    assert manifest["models"]["judge_1"]["scoring"] == "logprobs"
    assert manifest["models"]["judge_1"]["threshold"] == 0.15
    assert "scoring" not in manifest["models"]["judge_2"]
    assert "judge_1 (harmful when P(harmful) >= 0.15)" in (snap / "README.md").read_text()


def test_calibrate_on_labels_gives_a_score_jurors_weighted_auroc_and_fits_its_threshold(tmp_path, capsys):
    """A build whose score juror gives every candidate its own P(harmful); one person labels
    the validation sample; `orsc calibrate --labels --fit` reports the juror's AUROC with
    each item at its stratum's weight (scikit-learn's, computed here from the files) and a
    config line that says the threshold came from those labels."""
    def p_of(text: str) -> float:
        return 0.05 + 0.9 * int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8

    def reply(request: dict):
        if request["model"] != "judge-1":
            return json.dumps({"label": "benign", "rationale": "scripted"})
        p = p_of(request["messages"][-1]["content"])
        top = [{"token": "harm", "logprob": math.log(p)}, {"token": "ben", "logprob": math.log(1 - p)}]
        word = "harmful" if p >= 0.5 else "benign"
        return word, [{"token": word[:4], "logprob": max(t["logprob"] for t in top), "top_logprobs": top}]

    server = FakeOpenAI(reply).start()
    try:
        cfg = score_config(tmp_path, server.base_url, sample={"per_stratum": 3})
        assert main(["build", "--config", str(cfg), "--name", "scored"]) == 0
    finally:
        server.stop()
    snap = tmp_path / "outputs" / "snapshots" / "scored"
    assert main(["annotate", str(snap), "--out", str(tmp_path / "tasks"), "--annotators", "1"]) == 0
    rows = {r["id"]: r for name in ("prompts.jsonl", "rejected.jsonl")
            for r in map(json.loads, (snap / name).read_text().splitlines())}
    score = {i: v["p_harmful"] for i, r in rows.items() for v in r["votes"] if v["juror"] == "judge_1"}
    tasks = csv_rows(tmp_path / "tasks" / "annotator_1.csv")
    for t in tasks:  # the person mostly agrees with the score, not always
        flip = int(hashlib.sha256(t["prompt_id"].encode()).hexdigest()[:2], 16) < 64
        t["label"] = "harmful" if (score[t["prompt_id"]] >= 0.5) != flip else "benign"
    labels = tmp_path / "labels.csv"
    with labels.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(tasks[0]))
        writer.writeheader()
        writer.writerows(tasks)
    assert main(["validate", str(snap), str(labels), "--name", "scored-val"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--labels", str(snap.parent / "scored-val"), "--fit", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # by hand: each sampled item weighs N / n of its stratum (everyone labelled, nobody undecided)
    with (snap / "validation_sample.csv").open(encoding="utf-8", newline="") as fh:
        sample = list(csv.DictReader(fh))
    label = {t["prompt_id"]: t["label"] for t in tasks}
    weights = [1 / float(s["inclusion_probability"]) for s in sample]
    truth = [label[s["id"]] == "harmful" for s in sample]
    assert 0 < sum(truth) < len(truth)
    expected = roc_auc_score(truth, [score[s["id"]] for s in sample], sample_weight=weights)
    juror = report["jurors"]["judge_1"]
    assert juror["auroc"] == pytest.approx(round(expected, 4))
    assert juror["items"] == len(sample) and report["items"] == len(sample)
    line = report["fit"]["judge_1"]["config_line"]
    assert "scoring: logprobs, threshold:" in line
    assert "# fitted on people's labels of scored-val (sha256:" in line
