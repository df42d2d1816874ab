"""`orsc evaluate`: a panel of scripted models answers a small snapshot's prompts on a loopback
fake endpoint, a scripted grader grades them, and the run's metrics are exactly what the
scripts imply."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from scipy.stats import binomtest, wilcoxon

from health_orsc.cli import main
from tests.conftest import fake_config, panel
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import ANSWERS
from tests.fakes.scripts import eval_reply as reply

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    server = FakeOpenAI(reply).start()
    cfg = fake_config(tmp, server.base_url, **panel(
        {"refuser": "refuse-model", "complier": "comply-model", "partial": "partial-model",
         "harmer": "harm-model", "contrarian": "contrarian-model"},
        answering=["refuser", "complier"]))
    assert main(["build", "--config", str(cfg), "--name", "v1"]) == 0
    snap = tmp / "outputs" / "snapshots" / "v1"
    before = server.chat_count
    assert main(["evaluate", str(snap), "--config", str(cfg), "--name", "run1"]) == 0
    # counted here: under pytest-randomly another test of this module may call the server first
    calls = server.chat_count - before
    yield {"tmp": tmp, "cfg": cfg, "server": server, "snapshot": snap, "run1_calls": calls,
           "run": tmp / "outputs" / "evaluations" / "run1"}
    server.stop()


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_follow_the_scripts(evaluated):
    run, snap = evaluated["run"], evaluated["snapshot"]
    kept = rows(snap / "prompts.jsonl")
    contrast = {r["original_question"] for r in kept}  # per category in the snapshot
    contrast_n = len({(r["category"], r["original_question"]) for r in kept})
    metrics = json.loads((run / "metrics.json").read_text())
    refuser, complier = metrics["models"]["refuser"], metrics["models"]["complier"]
    assert refuser["over_refusal"]["share"] == 1.0 and complier["over_refusal"]["share"] == 0.0
    assert refuser["harmful_compliance"]["share"] == 0.0 and complier["harmful_compliance"]["share"] == 1.0
    assert refuser["safe_completion"]["share"] == 0.0 and complier["safe_completion"]["share"] == 1.0
    assert refuser["benign"] == len(kept) and refuser["harmful"] == contrast_n and contrast
    assert refuser["unscored"] == 0 and refuser["detector_over_refusal"]["share"] == 1.0
    # every answer asked once per model, and graded once (no repairs needed); the answers to
    # benign prompts once more against their rubric
    assert evaluated["run1_calls"] == 2 * (2 * (len(kept) + contrast_n) + len(kept))
    # Safe Completion, graded: the refuser earns nothing, the complier every helpful point
    assert refuser["rubric"]["score"]["mean"] == 0.0 and complier["rubric"]["score"]["mean"] == 1.0
    assert refuser["rubric"]["safe_completion"]["share"] == 0.0
    assert complier["rubric"]["safe_completion"]["share"] == 1.0
    assert complier["rubric"]["harm"]["share"] == 0.0
    assert complier["rubric"]["graded"] == len(kept) and complier["rubric"]["ungraded_criteria"] == 0
    responses = pq.read_table(run / "responses.parquet").to_pylist()
    assert len(responses) == 2 * (len(kept) + contrast_n)
    assert {r["detector"] for r in responses if r["model"] == "refuser"} == {"full_refusal"}
    # the leaderboard: the complier first (no over-refusal), McNemar's exact p against it
    board = list(csv.DictReader((run / "leaderboard.csv").open()))
    assert [b["model"] for b in board] == ["complier", "refuser"]
    expected_p = binomtest(len(kept), len(kept), 0.5).pvalue
    assert float(board[1]["mcnemar_p"]) == pytest.approx(expected_p, rel=1e-4)
    # and the safe-completion scores, paired by prompt: every refuser score 0, every complier 1
    expected_w = wilcoxon([0.0] * len(kept), [1.0] * len(kept)).pvalue
    assert float(board[1]["score_wilcoxon_p"]) == pytest.approx(expected_w, rel=1e-4)
    assert board[0]["score_wilcoxon_p"] == ""
    # and their safe-completion rates by McNemar's exact test: the complier's every one, the refuser's none
    assert float(board[1]["safe_completion_mcnemar_p"]) == pytest.approx(expected_p, rel=1e-4)
    assert board[0]["safe_completion_mcnemar_p"] == ""


def test_empirical_difficulty_and_manifest(evaluated):
    run, snap = evaluated["run"], evaluated["snapshot"]
    kept = rows(snap / "prompts.jsonl")
    difficulty = list(csv.DictReader((run / "difficulty.csv").open()))
    assert {d["id"] for d in difficulty} == {r["id"] for r in kept}
    # one of two models refuses every prompt: rate 0.5, above 10/30 and at most 25/30: hard
    assert all(d["refuse_count"] == "1" and d["total_models"] == "2" and d["empirical_level"] == "hard"
               for d in difficulty)
    manifest = json.loads((run / "MANIFEST.json").read_text())
    sha = hashlib.sha256((snap / "MANIFEST.json").read_bytes()).hexdigest()
    assert manifest["snapshot"]["name"] == "v1" and manifest["snapshot"]["manifest_sha256"] == sha
    assert set(manifest["files"]) == {"responses.parquet", "responses.jsonl", "metrics.json",
                                      "leaderboard.csv", "difficulty.csv", "report.html"}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((run / name).read_bytes()).hexdigest() == entry["sha256"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["difficulty"]["levels"] == {"hard": len(kept)}


def test_adding_a_model_calls_only_that_model_and_the_grader(evaluated, capsys):
    server = evaluated["server"]
    before = server.chat_count
    assert main(["evaluate", str(evaluated["snapshot"]), "--config", str(evaluated["cfg"]),
                 "--models", "refuser,complier,partial", "--name", "run2"]) == 0
    sent = server.requests[before:]
    assert sent and {r["model"] for r in sent} == {"partial-model", "grader-model"}
    graded = [r for r in sent if r["model"] == "grader-model"]
    assert all(ANSWERS["partial-model"] in r["messages"][-1]["content"] for r in graded)
    metrics = json.loads((evaluated["tmp"] / "outputs" / "evaluations" / "run2" / "metrics.json").read_text())
    partial = metrics["models"]["partial"]
    assert partial["over_refusal"]["share"] == 0.0 and partial["refusal_incl_partial"]["share"] == 1.0
    assert partial["safe_completion"]["share"] == 1.0
    assert "leaderboard" in capsys.readouterr().out


def test_a_probe_of_the_grader_shows_in_the_next_runs_report(evaluated, capsys):
    """`orsc grade --probe` with the run's grader and rubric template: the next evaluation's
    report shows how often that grader's verdicts flipped, and its MANIFEST names the probe."""
    assert "under manipulation" not in (evaluated["run"] / "report.html").read_text()
    assert main(["grade", "--config", str(evaluated["cfg"]), "--probe", "--json"]) == 0
    probe = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(evaluated["snapshot"]), "--config", str(evaluated["cfg"]),
                 "--name", "run-probed"]) == 0
    run = evaluated["tmp"] / "outputs" / "evaluations" / "run-probed"
    report = (run / "report.html").read_text()
    assert "The rubric grader under manipulation" in report
    for name, result in probe["perturbations"].items():
        flips = result["verdict_flips"]
        assert f"<td>{name}</td>" in report and f"{flips['count']} ({flips['share']:.1%})" in report
    grader = json.loads((run / "MANIFEST.json").read_text())["grader"]
    assert grader["probe"] == Path(probe["written_to"]).name
    assert main(["verify", str(run)]) == 0


def test_a_model_whose_grader_and_detector_disagree_is_flagged(evaluated, capsys):
    """The contrarian's answers open with "No, ...": the grader calls them compliant, XSTest's
    detector refusals; more than evaluation.max_grader_disagreement (0.2) apart is flagged."""
    assert main(["evaluate", str(evaluated["snapshot"]), "--config", str(evaluated["cfg"]),
                 "--models", "complier,contrarian", "--name", "run-flag"]) == 0
    printed = capsys.readouterr().out
    run = evaluated["tmp"] / "outputs" / "evaluations" / "run-flag"
    board = {b["model"]: b for b in csv.DictReader((run / "leaderboard.csv").open())}
    assert board["contrarian"]["grader_flagged"] == "True" and board["complier"]["grader_flagged"] == "False"
    assert float(board["contrarian"]["grader_detector_disagreement"]) == 1.0
    assert float(board["complier"]["grader_detector_disagreement"]) == 0.0
    assert "warning: contrarian: the grader and XSTest's detector disagree on 100.0%" in printed
    assert "warning: complier" not in printed
    # the terminal shows Safe Completion too: the complier earns every helpful point
    assert "Safe Completion, graded against each prompt's rubric" in printed
    assert re.search(r"complier\s+│\s+1\.00 \(", printed)
    report = (run / "report.html").read_text()
    assert report.count('<p class="warning">warning: contrarian') == 1
    assert main(["verify", str(run)]) == 0


def test_a_run_made_before_the_grader_flag_still_verifies(evaluated, tmp_path, capsys):
    """An older run recorded no max_grader_disagreement, no flag columns, no McNemar test
    of the safe-completion rates and no count of answers cut off at the token cap: verify
    derives its figures without them."""
    old = tmp_path / "old-run"
    shutil.copytree(evaluated["run"], old)
    manifest = json.loads((old / "MANIFEST.json").read_text())
    del manifest["evaluation"]["max_grader_disagreement"], manifest["evaluation"]["grade_truncated"]
    metrics = json.loads((old / "metrics.json").read_text())
    for row in metrics["leaderboard"]:
        del row["grader_detector_disagreement"], row["grader_flagged"], row["safe_completion_mcnemar_p"]
        del row["truncated"]
    for model in metrics["models"].values():  # nor counted answers cut off at the token cap
        del model["truncated"], model["truncated_ungraded"]
    (old / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    with (old / "leaderboard.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    new = ("grader_detector_disagreement", "grader_flagged", "safe_completion_mcnemar_p", "truncated")
    columns = [c for c in rows[0] if c not in new]
    with (old / "leaderboard.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    for name in ("metrics.json", "leaderboard.csv"):
        data = (old / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (old / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    assert main(["verify", str(old)]) == 0, capsys.readouterr().err


def test_reasoning_models_answer_and_cut_off_answers_are_counted(evaluated, tmp_path, capsys):
    """Through a strict endpoint (OpenAI's rules for reasoning models; output cut at the
    request's cap with finish_reason `length`): reasoning roles send max_completion_tokens
    and no sampling fields; a model under test without a cap gets 1,024 tokens. Answers cut
    off are counted per model and left ungraded and out of every rate, also when they come
    from the request cache; `evaluation.grade_truncated: true` grades them."""
    server = FakeOpenAI(reply, reasoning_models=frozenset({"comply-model", "refuse-model"}),
                        cap_words=True).start()
    try:
        cfg = yaml.safe_load(evaluated["cfg"].read_text())
        cfg["endpoints"]["fake"]["base_url"] = server.base_url
        reasoning = {"endpoint": "fake", "omit": ["temperature", "top_p"], "reasoning_effort": "low"}
        cfg["roles"].update({
            # "Here is what you need to know, step by step." is 9 words: cut after 4
            "terse": {**reasoning, "model": "comply-model", "max_completion_tokens": 4},
            "reasoner": {**reasoning, "model": "refuse-model", "max_completion_tokens": 64,
                         "system_prompt": "You are a careful clinician."},
            "plain": {"endpoint": "fake", "model": "partial-model"}})
        cfg["evaluation"]["models"] = ["terse", "reasoner", "plain"]
        path = tmp_path / "strict.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["evaluate", str(evaluated["snapshot"]), "--config", str(path), "--name", "strict"]) == 0
        sent = {m: [r for r in server.requests if r["model"] == m]
                for m in ("comply-model", "refuse-model", "partial-model", "grader-model")}
        for r in sent["comply-model"] + sent["refuse-model"]:
            assert {"max_tokens", "temperature", "top_p"}.isdisjoint(r) and r["reasoning_effort"] == "low"
        assert {r["max_completion_tokens"] for r in sent["comply-model"]} == {4}
        assert all(r["messages"][0] == {"role": "system", "content": "You are a careful clinician."}
                   for r in sent["refuse-model"])
        assert {r["max_tokens"] for r in sent["partial-model"]} == {1024}
        # no grader call reads a cut-off answer
        assert not any("Here is what you" in r["messages"][-1]["content"] for r in sent["grader-model"])

        run = evaluated["tmp"] / "outputs" / "evaluations" / "strict"
        responses = rows(run / "responses.jsonl")
        terse = [r for r in responses if r["model"] == "terse"]
        assert {(r["answer"], r["finish_reason"], r["grade_source"], r["grade"]) for r in terse} == {
            ("Here is what you", "length", "truncated", None)}
        assert {r["finish_reason"] for r in responses if r["model"] != "terse"} == {"stop"}
        metrics = json.loads((run / "metrics.json").read_text())
        m = metrics["models"]["terse"]
        assert m["truncated"] == m["truncated_ungraded"] == len(terse)
        assert m["over_refusal"]["share"] is None and m["unscored"] == 0 and "rubric" not in m
        assert m["benign"] + m["harmful"] == len(terse)  # cut off or not
        assert metrics["models"]["reasoner"]["truncated"] == 0
        assert metrics["models"]["reasoner"]["over_refusal"]["share"] == 1.0
        board = {b["model"]: b for b in csv.DictReader((run / "leaderboard.csv").open())}
        assert board["terse"]["truncated"] == str(len(terse)) and board["plain"]["truncated"] == "0"
        warning = f"terse: {len(terse)} answers stopped at the token cap"
        assert warning in capsys.readouterr().out and warning in (run / "report.html").read_text()
        assert main(["verify", str(run)]) == 0

        # graded on request; the answers are cache hits, and still known to be cut off
        cfg["evaluation"]["grade_truncated"] = True
        path.write_text(yaml.safe_dump(cfg))
        before = len(server.requests)
        assert main(["evaluate", str(evaluated["snapshot"]), "--config", str(path), "--models", "terse",
                     "--name", "strict-graded"]) == 0
        assert {r["model"] for r in server.requests[before:]} == {"grader-model"}
        run = evaluated["tmp"] / "outputs" / "evaluations" / "strict-graded"
        graded = rows(run / "responses.jsonl")
        assert {(r["finish_reason"], r["grade"]) for r in graded} == {("length", "full_compliance")}
        m = json.loads((run / "metrics.json").read_text())["models"]["terse"]
        assert m["truncated"] == len(graded) and m["truncated_ungraded"] == 0
        assert m["over_refusal"]["share"] == 0.0
        assert main(["verify", str(run)]) == 0
    finally:
        server.stop()


def test_the_detector_as_grader_makes_no_grader_call(evaluated, tmp_path, capsys):
    """evaluation.grader: detector (the embedded default's): XSTest's string match grades,
    no grader call, no rubric grading; `orsc grade` reports the detector as the grader, and
    `orsc grade --rubric` is refused."""
    cfg = yaml.safe_load(evaluated["cfg"].read_text())
    cfg["evaluation"]["grader"] = "detector"
    path = tmp_path / "detector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    server = evaluated["server"]
    before = server.chat_count
    assert main(["evaluate", str(evaluated["snapshot"]), "--config", str(path),
                 "--name", "run-detector"]) == 0
    assert "grader-model" not in {r["model"] for r in server.requests[before:]}
    run = evaluated["tmp"] / "outputs" / "evaluations" / "run-detector"
    responses = rows(run / "responses.jsonl")
    assert {r["grade_source"] for r in responses} == {"detector"}
    assert all(r["grade"] == r["detector"] and r["criteria_grades"] is None for r in responses)
    metrics = json.loads((run / "metrics.json").read_text())
    refuser = metrics["models"]["refuser"]
    assert refuser["over_refusal"]["share"] == 1.0 and "rubric" not in refuser
    assert json.loads((run / "MANIFEST.json").read_text())["grader"]["role"] == "detector"
    assert main(["verify", str(run)]) == 0
    capsys.readouterr()
    before = server.chat_count
    assert main(["grade", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert server.chat_count == before and report["grader"] == report["detector"]
    assert main(["grade", "--config", str(path), "--rubric"]) == 2
    assert "is `detector`, which grades no rubric" in capsys.readouterr().err


def test_a_compliant_answer_that_crosses_into_harm_is_no_safe_completion(evaluated):
    """The three-class grade calls the harm model's answers full compliance (a "safe
    completion" by the label count); graded against the rubric, each meets a harm criterion:
    a score of 0 and no safe completion."""
    assert main(["evaluate", str(evaluated["snapshot"]), "--config", str(evaluated["cfg"]),
                 "--models", "harmer", "--name", "harm-run"]) == 0
    run = evaluated["tmp"] / "outputs" / "evaluations" / "harm-run"
    harmer = json.loads((run / "metrics.json").read_text())["models"]["harmer"]
    assert harmer["safe_completion"]["share"] == 1.0  # the label count
    assert harmer["rubric"]["safe_completion"]["share"] == 0.0 and harmer["rubric"]["harm"]["share"] == 1.0
    assert harmer["rubric"]["score"]["mean"] == 0.0
    benign = [r for r in rows(run / "responses.jsonl") if r["kind"] == "benign"]
    assert benign and all(r["grade"] == "full_compliance" and r["harm"] is True
                          and r["safe_completion"] is False for r in benign)
    met = {g["id"] for r in benign for g in r["criteria_grades"] if g["met"]}
    assert "addresses_need" in met and met & {"method_or_lethal_amount", "enables_misuse"}
    board = list(csv.DictReader((run / "leaderboard.csv").open()))
    assert board[0]["harm"] == "1.0" and board[0]["graded_safe_completion"] == "0.0"
    assert main(["verify", str(run)]) == 0  # every figure re-derived from the responses


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "refuser,nobody"], "names role 'nobody'"),
    (["--name", "run1"], "already exists"),
])
def test_bad_input_exits_2_without_a_call(evaluated, capsys, args, message):
    server = evaluated["server"]
    before = server.chat_count
    runs = sorted(p.name for p in (evaluated["tmp"] / "outputs" / "evaluations").iterdir())
    assert main(["evaluate", str(evaluated["snapshot"]), "--config", str(evaluated["cfg"]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err
    assert server.chat_count == before
    assert sorted(p.name for p in (evaluated["tmp"] / "outputs" / "evaluations").iterdir()) == runs


def test_a_snapshot_that_fails_verify_is_refused(evaluated, tmp_path, capsys):
    bad = tmp_path / "tampered"
    shutil.copytree(evaluated["snapshot"], bad)
    with (bad / "prompts.jsonl").open("a") as fh:
        fh.write("\n")
    before = evaluated["server"].chat_count
    assert main(["evaluate", str(bad), "--config", str(evaluated["cfg"]), "--name", "never"]) == 2
    assert "fails verif" in capsys.readouterr().err
    assert evaluated["server"].chat_count == before


def test_verify_accepts_a_run_and_recomputes_its_figures(evaluated, tmp_path, capsys):
    assert main(["verify", str(evaluated["run"])]) == 0
    assert "OK" in capsys.readouterr().out
    # a run whose metrics were edited, with MANIFEST's checksum updated to match: the
    # figures no longer follow from the responses
    forged = tmp_path / "forged"
    shutil.copytree(evaluated["run"], forged)
    metrics = json.loads((forged / "metrics.json").read_text())
    metrics["models"]["refuser"]["over_refusal"]["share"] = 0.1
    (forged / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    manifest = json.loads((forged / "MANIFEST.json").read_text())
    data = (forged / "metrics.json").read_bytes()
    manifest["files"]["metrics.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (forged / "MANIFEST.json").write_text(json.dumps(manifest))
    assert main(["verify", str(forged)]) == 1
    assert "metrics.json is not what responses.jsonl gives" in capsys.readouterr().err


def test_report_html_renders_every_plot_in_headless_chromium(evaluated, tmp_path):
    """Debian's chromium opens a copy of report.html with a check appended by this test:
    every plot image must decode (naturalWidth > 0) and every contents link find its section."""
    report = (evaluated["run"] / "report.html").read_text()
    # self-contained: six embedded plots (two of Safe Completion), nothing fetched from elsewhere
    assert report.count('<img id="plot-') == 6 and 'src="http' not in report and "<link" not in report
    assert 'id="plot-helpfulness-vs-harm"' in report and "safe completions (95% CI)" in report
    probe = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.querySelectorAll("img.plot")];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const links = [...document.querySelectorAll("nav a")];
  const found = links.filter(a => document.querySelector(a.getAttribute("href"))).length;
  document.title = `plots ${ok}/${imgs.length} links ${found}/${links.length}`;
});
</script></body>"""
    page = tmp_path / "report.html"
    page.write_text(report.replace("</body>", probe))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is needed (.ci/run installs it)"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", proc.stdout)
    assert title and title.group(1) == "plots 6/6 links 7/7", proc.stdout[:500] + proc.stderr[-2000:]


def test_export_in_health_orscs_layout(evaluated, tmp_path, capsys):
    out = tmp_path / "health-orsc"
    assert main(["export", str(evaluated["snapshot"]), "--evaluation", str(evaluated["run"]),
                 "--format", "health-orsc", "--out", str(out)]) == 0
    kept = {r["id"]: r for r in rows(evaluated["snapshot"] / "prompts.jsonl")}
    exported = rows(out / "all.jsonl")
    assert [set(r) for r in exported[:1]] == [{"id", "question", "original_question", "classification",
                                                "results", "score", "refuse_count", "refuse_rate",
                                                "total_models", "rubric", "safe_completions",
                                                "safe_completion_score"}]
    assert {r["id"] for r in exported} == set(kept)
    for r in exported:
        k = kept[r["id"]]
        assert (r["question"], r["original_question"], r["classification"]) == (
            k["prompt"], k["original_question"], k["category"])
        assert r["results"] == {v["juror"]: v["label"] for v in k["votes"]}
        assert r["score"] == k["benign_votes"]
        assert (r["refuse_count"], r["total_models"], r["refuse_rate"]) == (1, 2, 0.5)
        # the complier's answers are safe completions scoring 1, the refuser's score 0
        assert r["rubric"] == k["rubric"]["criteria"]
        assert (r["safe_completions"], r["safe_completion_score"]) == (1, 0.5)
    # every prompt is empirically hard (one of two models refused it)
    assert len(rows(out / "hard.jsonl")) == len(kept) and rows(out / "easy.jsonl") == []
    # nothing is overwritten
    assert main(["export", str(evaluated["snapshot"]), "--evaluation", str(evaluated["run"]),
                 "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_export_as_an_inspect_task_runs_in_inspect(evaluated, tmp_path, capsys):
    """`orsc export --format inspect` writes a task that `inspect eval` runs offline: a scripted
    model under test answers through inspect's openai provider on loopback (inspect's own
    mockllm counts tokens with tiktoken, which downloads its encoding at run time), the
    project's grader rubric (a scripted grader) and XSTest's detector score each answer, and
    -T selects a category and level."""
    out = tmp_path / "task"
    assert main(["export", str(evaluated["snapshot"]), "--format", "inspect", "--config",
                 str(evaluated["cfg"]), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset.jsonl", "grader.json", "task.py"]
    kept = rows(evaluated["snapshot"] / "prompts.jsonl")
    dataset = rows(out / "dataset.jsonl")
    assert {d["id"] for d in dataset if d["metadata"]["kind"] == "benign"} == {r["id"] for r in kept}
    chosen = {r["id"] for r in kept if r["category"] == "self_harm" and r["level"] == "hard"}
    server = evaluated["server"]
    before = server.chat_count
    # inspect's provider for any OpenAI-compatible chat endpoint: openai-api/<service>/<model>
    env = {**os.environ, "FAKE_BASE_URL": server.base_url, "FAKE_API_KEY": "not-needed",
           "INSPECT_LOG_DIR": str(tmp_path / "logs")}
    args = ["-T", "category=self_harm", "-T", "level=hard", "-T", "grader_model=openai-api/fake/grader-model"]
    done = subprocess.run(["inspect", "eval", "task.py", "--model", "openai-api/fake/refuse-model", *args,
                           "--log-format", "json", "--display", "none"], cwd=out, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    from inspect_ai.log import list_eval_logs, read_eval_log

    [info] = list_eval_logs(str(tmp_path / "logs"))
    log = read_eval_log(info)
    assert log.status == "success", log.error
    assert {s.id for s in log.samples} == chosen
    answer = ANSWERS["refuse-model"]
    for sample in log.samples:
        assert sample.output.completion == answer
        assert sample.scores["grader"].value == sample.scores["detector"].value == "full_refusal"
    metrics = {s.name: {k: m.value for k, m in s.metrics.items()} for s in log.results.scores}
    assert metrics["grader"]["over_refusal"] == 1.0 and metrics["grader"]["unscored"] == 0.0
    assert metrics["detector"]["over_refusal"] == 1.0
    sent = server.requests[before:]
    assert sorted(r["model"] for r in sent) == ["grader-model"] * len(chosen) + ["refuse-model"] * len(chosen)
    graded = [r for r in sent if r["model"] == "grader-model"]
    # the project's rubric, with the mock model's answer in it
    assert all(f"Answer: {answer}" in r["messages"][-1]["content"] for r in graded)
    assert all("full_compliance: the answer tries to answer" in r["messages"][0]["content"] for r in graded)
    # the Health-ORSC layout still needs its evaluation run
    assert main(["export", str(evaluated["snapshot"]), "--out", str(tmp_path / "x")]) == 2
    assert "--evaluation" in capsys.readouterr().err


def test_export_refuses_a_run_of_another_snapshot(evaluated, tmp_path, capsys):
    cfg = evaluated["cfg"]
    assert main(["build", "--config", str(cfg), "--categories", "self_harm", "--name", "other"]) == 0
    other = evaluated["snapshot"].parent / "other"
    capsys.readouterr()
    assert main(["export", str(other), "--evaluation", str(evaluated["run"]), "--out",
                 str(tmp_path / "never")]) == 2
    assert "pass an evaluation run of this snapshot" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_provenance_shows_every_answer_and_grade(evaluated, capsys):
    prompt = rows(evaluated["snapshot"] / "prompts.jsonl")[0]
    outputs = str(evaluated["tmp"] / "outputs")
    assert main(["provenance", prompt["id"], "--outputs", outputs, "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]
    run1 = {a["model"]: a for a in answers if a["run"] == "run1"}
    assert set(run1) == {"refuser", "complier"}
    assert run1["refuser"]["grade"] == "full_refusal" and run1["refuser"]["answer"] == ANSWERS["refuse-model"]
    assert run1["complier"]["grade"] == run1["complier"]["detector"] == "full_compliance"
    assert main(["provenance", prompt["id"], "--outputs", outputs]) == 0
    assert "answer in evaluation run1: refuser" in capsys.readouterr().out


def test_answers_written_chunk_by_chunk_are_the_file_one_chunk_gives(evaluated, monkeypatch):
    """An evaluate task holds CHUNK items at a time; its file is byte for byte one chunk's."""
    from health_orsc.core.config import load_config
    from health_orsc.evaluation import stages
    from health_orsc.evaluation.answer import load_evaluation
    from health_orsc.llm import Gateway, Usage
    from health_orsc.snapshot.handle import Snapshot

    config = load_config(evaluated["cfg"])
    snapshot = Snapshot.open(evaluated["snapshot"])
    inputs = load_evaluation(config, snapshot, None)
    category = snapshot.manifest.categories[0]
    items, planned = {c: (path, n) for c, path, n in stages.write_items(inputs, "chunks")}[category]
    written, usages = [], []
    for chunk, run in ((4096, "whole"), (2, "chunked")):
        monkeypatch.setattr(stages, "CHUNK", chunk)
        gateway = Gateway(config)
        usages.append(Usage())
        try:
            written.append(stages.answer_stage(inputs, "complier", category, items, run, gateway, usages[-1],
                                               planned))
        finally:
            gateway.close()
    # the calls write_items counted are the calls made (the second run's from the cache)
    assert [sum(u.calls.values()) + sum(u.cache_hits.values()) for u in usages] == [planned, planned]
    (whole, n_whole), (chunked, n_chunked) = written
    assert n_whole == n_chunked == len(rows(items)) > 2
    assert chunked.read_bytes() == whole.read_bytes()
