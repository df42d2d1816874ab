"""`orsc`: every command that reports something prints, with --json, the result model its
--help names; every command fails the same way (one message, the log's path, no traceback);
every subcommand's --help has a description and an example."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from health_orsc.audit.diff import SnapshotDiff
from health_orsc.audit.provenance import Provenance
from health_orsc.audit.verify import VerifyReport
from health_orsc.build.stages import BuildResult
from health_orsc.cache.migrate import MigrationReport
from health_orsc.cli import main
from health_orsc.cli.app import parser
from health_orsc.cli.cache import EvictionResult
from health_orsc.evaluation.grade import GradeReport
from health_orsc.evaluation.stages import EvaluationResult
from health_orsc.validation.annotate import AnnotationResult
from health_orsc.validation.calibrate import CalibrationReport
from health_orsc.validation.validity import ValidationResult
from tests.conftest import DATA, csv_rows, fake_config, panel
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import eval_reply

pytestmark = pytest.mark.slow


def _json(capsys, *argv: str, rc: int = 0) -> str:
    assert main([*argv, "--json"]) == rc
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A config with a panel and a grader on the fake endpoint; one snapshot built with --json."""
    tmp = tmp_path_factory.mktemp("cli")
    server = FakeOpenAI(eval_reply).start()
    cfg = fake_config(tmp, server.base_url, **panel({"complier": "comply-model"}))
    out = io.StringIO()  # a module fixture has no capsys
    with contextlib.redirect_stdout(out):
        assert main(["build", "--config", str(cfg), "--name", "v1", "--json"]) == 0
    yield {"tmp": tmp, "cfg": str(cfg), "snapshot": tmp / "outputs" / "snapshots" / "v1",
           "build": BuildResult.model_validate_json(out.getvalue())}
    server.stop()


def test_build_json(project):
    result = project["build"]
    assert Path(result.snapshot) == project["snapshot"] and result.digest.startswith("sha256:")
    assert {r.category for r in result.summary} == {"self_harm", "drug_abuse"}
    assert sum(result.model_calls.values()) > 0 and set(result.stages) >= {"generate", "jury", "export"}


def test_verify_json(project, capsys, tmp_path):
    report = VerifyReport.model_validate_json(_json(capsys, "verify", str(project["snapshot"])))
    assert report.ok and report.digest == project["build"].digest
    broken = tmp_path / "broken"
    shutil.copytree(project["snapshot"], broken)
    (broken / "validation_sample.csv").write_text("id\n")
    report = VerifyReport.model_validate_json(_json(capsys, "verify", str(broken), rc=1))
    assert not report.ok and any("validation_sample.csv" in p for p in report.problems)


def test_annotate_and_validate_json(project, capsys, tmp_path):
    out = tmp_path / "tasks"
    result = AnnotationResult.model_validate_json(
        _json(capsys, "annotate", str(project["snapshot"]), "--out", str(out)))
    assert result.annotators == 2 and len(result.files) == 2 and all(Path(f).is_file() for f in result.files)
    for f in result.files:  # everyone says benign
        rows = csv_rows(Path(f))
        with open(f, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "label": "benign"} for r in rows)
    validated = ValidationResult.model_validate_json(_json(
        capsys, "validate", str(project["snapshot"]), *result.files, "--name", "v1-validated"))
    assert Path(validated.snapshot).name == "v1-validated" and validated.gated is None
    assert validated.report.labels.rows == result.labels
    assert json.loads(Path(validated.report_file).read_text())["labels"]["rows"] == result.labels


def test_evaluate_json(project, capsys):
    result = EvaluationResult.model_validate_json(
        _json(capsys, "evaluate", str(project["snapshot"]), "--config", project["cfg"], "--name", "e1"))
    assert Path(result.run).name == "e1" and [r["model"] for r in result.leaderboard] == ["complier"]
    assert result.leaderboard[0]["over_refusal"] == 0.0 and result.tasks == 2


def test_grade_json(project, capsys):
    report = GradeReport.model_validate_json(_json(capsys, "grade", "--config", project["cfg"]))
    assert report.items == len(report.answers) == 42 and report.labelled == 42
    assert report.grader is not None and report.detector is not None and report.model_calls > 0


def test_calibrate_json(project, capsys, tmp_path):
    rows = [r for r in csv_rows(DATA / "gold" / "jury.csv") if r["category"] in ("self_harm", "drug_abuse")]
    gold = tmp_path / "gold.csv"
    with gold.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = CalibrationReport.model_validate_json(
        _json(capsys, "calibrate", "--config", project["cfg"], "--gold", str(gold)))
    assert report.items == report.benign + report.harmful == len(rows) == 40 and report.fit is None
    assert set(report.jurors) == {"judge_1", "judge_2", "judge_3", "rule"}


def test_provenance_and_diff_json(project, capsys):
    prompt = json.loads((project["snapshot"] / "prompts.jsonl").read_text().splitlines()[0])["id"]
    trace = Provenance.model_validate_json(_json(capsys, "provenance", prompt, "--config", project["cfg"]))
    assert trace.id == prompt and trace.status == "kept"
    diff = SnapshotDiff.model_validate_json(_json(capsys, "diff", str(project["snapshot"]),
                                                  str(project["snapshot"])))
    assert all(c.status == "unchanged" for c in diff.categories)


def test_cache_json(project, capsys, tmp_path):
    evicted = EvictionResult.model_validate_json(
        _json(capsys, "cache", "evict", "--config", project["cfg"], "--role", "judge_2", "--dry-run"))
    assert evicted.dry_run and evicted.keys and evicted.evicted == 0 and evicted.matching == "--role judge_2"
    moved = MigrationReport.model_validate_json(
        _json(capsys, "cache", "migrate", str(project["tmp"] / "outputs"), str(tmp_path / "copy")))
    assert moved.calls == moved.calls_new > 0 and moved.dst == str(tmp_path / "copy")


def test_an_unexpected_failure_is_one_message_and_a_log(project, capsys, tmp_path):
    """A snapshot whose rows are not JSON, given to a command that does not verify first."""
    damaged = tmp_path / "damaged"
    shutil.copytree(project["snapshot"], damaged)
    (damaged / "prompts.jsonl").write_text("{not json\n")
    assert main(["diff", str(project["snapshot"]), str(damaged)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diff failed: JSONDecodeError") and "Traceback" not in err
    log = Path(err.split("details (tracebacks, every task's log): ")[1].strip())
    assert "Traceback" in log.read_text()


def test_every_subcommand_describes_itself_with_an_example(capsys):
    commands = [["init"], ["build"], ["evaluate"], ["grade"], ["export"], ["serve"], ["verify"],
                ["annotate"], ["validate"], ["calibrate"], ["provenance"], ["diff"], ["import"], ["publish"],
                ["cache", "evict"], ["cache", "migrate"]]
    names = set(parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse has no API
    assert names == {c[0] for c in commands}
    for argv in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        assert exit_.value.code == 0
        help_text = capsys.readouterr().out
        assert "example:\n  orsc " in help_text, argv
    reports = ["build", "evaluate", "grade", "verify", "annotate", "validate", "calibrate", "provenance",
               "diff", "import", "publish"]
    for name in reports:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "--json" in capsys.readouterr().out, name


def test_format_choices_are_the_librarys_formats():
    """The CLI names its --format choices without importing the writers (start-up time);
    they must stay the formats the library writes."""
    from health_orsc.audit.imports import FORMATS as IMPORTS
    from health_orsc.evaluation.exports import FORMATS as EXPORTS
    from health_orsc.validation.annotate import FORMATS as TASKS

    commands = parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no API
    choices = {name: next(a.choices for a in commands[name]._actions if a.dest == "format")  # noqa: SLF001
               for name in ("annotate", "export", "import")}
    assert (tuple(choices["annotate"]), tuple(choices["export"]), tuple(choices["import"])) == (
        TASKS, EXPORTS, IMPORTS)


def test_version(capsys):
    from health_orsc import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"orsc {__version__}"
