"""`orsc evaluate`, `orsc grade` and `orsc export`: a panel of models on a snapshot, the
grader against people, and Health-ORSC-Bench's field layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from health_orsc.cli import render
from health_orsc.cli.common import (
    DEFAULT_ANSWERS,
    DEFAULT_RUBRIC_ANSWERS,
    add_config,
    add_json,
    check_cache_reachable,
    comma_list,
    command,
    console,
    emit,
    model_calls,
    prefect_env,
    run_logged,
    verified,
)
from health_orsc.core.config import load_config
from health_orsc.core.errors import InputError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from health_orsc.audit.verify import open_verified
    from health_orsc.evaluation.answer import load_evaluation
    from health_orsc.snapshot.store import check_snapshot_name, evaluations_dir

    config = load_config(args.config)
    models = comma_list(args.models, "--models", "role")
    base = open_verified(Path(args.snapshot), "evaluate")  # a snapshot that fails verify stops here
    inputs = load_evaluation(config, base, models)  # every input checked before any call
    if args.name is not None:
        check_snapshot_name(config.outputs_dir, args.name, evaluations_dir(config.outputs_dir))
    check_cache_reachable(config)
    prefect_env(config.outputs_dir)
    from health_orsc.flows.evaluate import evaluate_benchmark
    from health_orsc.runtime.procs import start_prefect_server
    from health_orsc.runtime.progress import note
    from health_orsc.runtime.terminal import build_console

    log_path = config.outputs_dir / "logs" / "evaluations" / f"{args.name or 'evaluate'}.log"
    with build_console(log_path):
        note(f"evaluating snapshot '{base.path.name}' with {', '.join(inputs.models)}; log: {log_path}")
        if inputs.rubrics_derived or inputs.rubrics_missing:
            bare = inputs.rubrics_derived + inputs.rubrics_missing
            note(f"{bare} kept prompts have no rubric (built before rubrics): {inputs.rubrics_derived} get"
                 " one from the rubric templates and their seeds, recorded in the run's responses"
                 f" (rubric_source: derived); {inputs.rubrics_missing} whose seed is gone are not graded"
                 " against a rubric")

        def run():
            start_prefect_server(config.outputs_dir)
            return evaluate_benchmark(str(config.source), str(base.path), inputs.models, args.name)

        result = run_logged("evaluation", log_path, run)
    emit(args, result, render.evaluation)
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    if args.rubric is not None or args.probe is not None:
        return _grade_rubric(args)
    from health_orsc.evaluation.answer import DETECTOR, load_grader
    from health_orsc.evaluation.grade import GENERIC, grade_answers, grade_report, read_answers
    from health_orsc.inputs.load import load_taxonomy

    config = load_config(args.config)
    taxonomy = load_taxonomy(config.seeds_dir)
    items = read_answers(Path(args.answers or DEFAULT_ANSWERS), taxonomy)
    entries = {c: taxonomy.entry(c).model_dump() for c in {i.category for i in items if i.category}}
    # evaluation.grader: detector grades without a call: the grader's figures are the detector's
    detector = config.evaluation.grader == DETECTOR
    template = None if detector else load_grader(config, {**entries, "(none)": GENERIC})
    results, calls, hits = model_calls(
        config, "grade", "answers", 0 if detector else sum(bool(i.answer.strip()) for i in items),
        lambda gateway: grade_answers(config, template, items, entries, gateway))
    report = grade_report(items, results)
    report.model_calls, report.cache_hits = calls, hits
    emit(args, report, render.grade)
    return 0


def _grade_rubric(args: argparse.Namespace) -> int:
    """`--rubric`: the rubric grader against people's per-criterion judgements; `--probe`:
    the same answers perturbed, and how often the grader's verdicts flip."""
    from health_orsc.core.errors import InputError
    from health_orsc.evaluation.answer import DETECTOR, grader_role, load_rubric_grader
    from health_orsc.evaluation.grade import GENERIC
    from health_orsc.evaluation.meta import grade_rubric_answers, read_rubric_answers, rubric_grade_report
    from health_orsc.evaluation.probe import perturbed, probe_report, write_probe
    from health_orsc.evaluation.stages import grader_identity
    from health_orsc.inputs.load import load_taxonomy

    probe = args.probe is not None
    config = load_config(args.config)
    ev = config.evaluation
    if ev.grader == DETECTOR:
        raise InputError(config.source, "evaluation.grader", "is `detector`, which grades no rubric",
                         "set evaluation.grader to a role with an LLM (e.g. grader) to grade rubrics")
    grader_role(config)  # InputError for an undefined grader role
    taxonomy = load_taxonomy(config.seeds_dir)
    path = Path(args.probe if probe else args.rubric)
    items = read_rubric_answers(path, taxonomy)
    entries = {c: taxonomy.entry(c).model_dump() for c in {i.category for i in items if i.category}}
    template = load_rubric_grader(config, {**entries, "(none)": GENERIC})
    if template is None:
        raise InputError(config.source, "evaluation.rubric_prompt", "is null: rubric grading is off",
                         "set it to a rubric grader template under prompts_templates/graders/ (the"
                         " shipped one is rubric.j2)")
    copies = perturbed(items) if probe else []
    every = items + [copy for _, copy in copies]
    results, calls, hits = model_calls(
        config, "grade", "answers",
        sum((len(i.criteria) if ev.per_criterion else 1) for i in every if i.answer.strip()),
        lambda gateway: grade_rubric_answers(config, template, every, entries, gateway))
    if not probe:
        report = rubric_grade_report(items, results, ev.safe_completion_min)
        report.model_calls, report.cache_hits = calls, hits
        emit(args, report, render.rubric_grade)
        return 0
    report = probe_report(items, results[:len(items)], copies, results[len(items):], ev.safe_completion_min,
                          grader_identity(config, template), str(path))
    report.model_calls, report.cache_hits = calls, hits
    write_probe(config.outputs_dir, report)
    emit(args, report, render.probe)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from health_orsc.audit.verify import open_verified
    from health_orsc.evaluation.exports import check_pair, write_health_orsc, write_inspect

    snapshot = Path(args.snapshot)
    if args.format == "inspect":
        config = load_config(args.config)
        counts = write_inspect(open_verified(snapshot, "export"), config, Path(args.out))
        console.print(f"wrote {args.out}: task.py, grader.json, dataset.jsonl ({counts['benign']} benign"
                      f" prompts, {counts['harmful']} harmful contrast requests); run it with"
                      f" `inspect eval {Path(args.out) / 'task.py'} --model PROVIDER/MODEL`")
        return 0
    if args.evaluation is None:
        raise InputError(None, "--evaluation", "is required with --format health-orsc",
                         "pass an evaluation run of the snapshot (outputs/evaluations/NAME)")
    run = Path(args.evaluation)
    digest = verified(snapshot, "export")
    verified(run, "export")
    check_pair(snapshot, digest, run)
    counts = write_health_orsc(snapshot, run, Path(args.out))
    console.print(f"wrote {args.out}: " + ", ".join(f"{name}.jsonl {n}" for name, n in counts.items()))
    return 0


def register(sub) -> None:
    e = command(sub, "evaluate", cmd_evaluate, "run the evaluate-benchmark flow: a panel of models answers a"
                " snapshot's prompts, a grader grades them",
                "Each model of the panel answers every kept prompt of SNAPSHOT (and, with"
                " evaluation.contrast, the seeds' harmful requests); the grader classifies each answer."
                " Writes outputs/evaluations/NAME/ (metrics, leaderboard, difficulty, report.html)."
                " --json prints an EvaluationResult.",
                "orsc evaluate outputs/snapshots/v1 --models model_a,model_b --name eval-1")
    e.add_argument("snapshot", help="snapshot directory (it must verify)")
    add_config(e)
    e.add_argument("--models", help="comma-separated roles that answer (default: evaluation.models)")
    e.add_argument("--name", help="run name (default: eval-<UTC timestamp>)")
    add_json(e)

    g = command(sub, "grade", cmd_grade, "grade answers with the evaluation's grader and detector, or"
                " against rubrics; with people's labels, measure the grader; --probe: under manipulation",
                "Grade a CSV of answers with the config's grader and XSTest's string-match detector; with"
                " a `label` column, each against people's labels (--json prints a GradeReport)."
                " --rubric: the rubric grader against people's per-criterion judgements: accuracy,"
                " Cohen's kappa and macro F1 per criterion kind (a RubricGradeReport)."
                " --probe: the same answers re-graded as perturbed copies that try to fool the"
                " grader; how often its verdict flips, per perturbation (a ProbeReport, also written to"
                " outputs/probes/, where evaluation reports find it).",
                "orsc grade --rubric --json")
    add_config(g)
    which = g.add_mutually_exclusive_group()
    which.add_argument("--answers", help="CSV: id, prompt, answer[, category][, label] (default: the"
                       " project's gold/answers.csv)")
    which.add_argument("--rubric", nargs="?", const=str(DEFAULT_RUBRIC_ANSWERS), metavar="FILE",
                       help="CSV: id, prompt, answer, criteria, met[, category][, harmful_detail] (default:"
                       " the project's gold/rubric_answers.csv)")
    which.add_argument("--probe", nargs="?", const=str(DEFAULT_RUBRIC_ANSWERS), metavar="FILE",
                       help="a CSV as for --rubric (default: the project's gold/rubric_answers.csv)")
    add_json(g)

    x = command(sub, "export", cmd_export,
                "a snapshot with an evaluation's difficulty in Health-ORSC-Bench's field layout, or as an"
                " inspect task",
                "--format health-orsc: write the kept prompts of SNAPSHOT with the refusal counts of an"
                " evaluation run of it, as Health-ORSC-Bench's files (all, easy, medium, hard)."
                " --format inspect: write a self-contained inspect task (task.py, dataset.jsonl with the"
                " prompts `orsc evaluate` asks, grader.json with the config's grader rubric); run it with"
                " `inspect eval DIR/task.py --model ...`, `-T category=... -T level=...` for a subset.",
                "orsc export outputs/snapshots/v1 --evaluation outputs/evaluations/eval-1 --out release\n"
                "  orsc export outputs/snapshots/v1 --format inspect --out inspect-task")
    x.add_argument("snapshot", help="snapshot directory")
    x.add_argument("--evaluation", help="an evaluation run of that snapshot (--format health-orsc)")
    x.add_argument("--format", choices=["health-orsc", "inspect"], default="health-orsc",
                   help="(default: %(default)s)")
    add_config(x)
    x.add_argument("--out", required=True, help="a new directory for the files")
