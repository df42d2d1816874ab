"""`orsc annotate`, `orsc validate` and `orsc calibrate`: people's labels in and out, and
the jury measured on labelled prompts."""

from __future__ import annotations

import argparse
from pathlib import Path

from health_orsc.cli import render
from health_orsc.cli.common import DEFAULT_GOLD, add_config, add_json, command, emit, model_calls, verified
from health_orsc.core.config import AGGREGATES, load_config
from health_orsc.core.errors import InputError


def _round(args: argparse.Namespace) -> int:
    if args.round < 1:
        raise InputError(None, "--round", f"{args.round} is not a round", "pass 1, 2, ...")
    return args.round


def cmd_annotate(args: argparse.Namespace) -> int:
    from health_orsc.snapshot.compat import recorded_config
    from health_orsc.snapshot.store import load_manifest
    from health_orsc.validation.annotate import AnnotationResult, plan_tasks, write_tasks

    snapshot = Path(args.snapshot)
    n = _round(args)
    verified(snapshot, "annotate")
    # Defaults: the snapshot's own config (validation.annotators, validation.overlap).
    planned = recorded_config(load_manifest(snapshot)).validation
    annotators = planned.annotators if args.annotators is None else args.annotators
    overlap = planned.overlap if args.overlap is None else args.overlap
    sample, rounds = None, {}
    if n > 1:
        from health_orsc.validation.rounds import next_round, sample_rows

        _, draw = next_round(snapshot, n, args.target_halfwidth)
        sample = sample_rows(draw.picked)
        wide = sum(1 for s in draw.strata if s["drawn"])
        rounds = {"round": n, "target_halfwidth": draw.target, "strata_wide": wide,
                  "strata_met": sum(1 for s in draw.strata if s["met"])}
        if args.overlap is None and overlap is not None:
            overlap = min(overlap, len(sample))  # the config's overlap was set for the first round
        if not sample:
            emit(args, AnnotationResult(out=args.out, format=args.format, items=0, annotators=annotators,
                                        shared=0, labels=0, files=[], **rounds), render.annotation)
            return 0
    tasks = plan_tasks(snapshot, annotators, overlap, sample=sample)
    reviews = {}
    if args.rubrics:
        from health_orsc.snapshot.handle import read_rows
        from health_orsc.validation.rubric_review import plan_reviews, review_files

        reviews = plan_reviews(tasks, read_rows(snapshot))
        if not any(reviews.values()):
            raise InputError(snapshot, "--rubrics", "no kept prompt of the validation sample has a rubric:"
                             " the snapshot was built before rubrics", "leave out --rubrics, or rebuild it")
    extra = review_files(reviews, args.format) if reviews else None
    files = write_tasks(tasks, Path(args.out), args.format, extra)
    result = AnnotationResult(out=args.out, format=args.format, items=tasks.items, annotators=annotators,
                              shared=tasks.shared, labels=tasks.labels, files=[str(f) for f in files],
                              rubric_reviews=sum(len(v) for v in reviews.values()), **rounds)
    emit(args, result, render.annotation)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from health_orsc.snapshot.compat import recorded_config
    from health_orsc.snapshot.handle import read_rows
    from health_orsc.snapshot.store import REPORT_FILE, check_snapshot_name, load_manifest, read_sample
    from health_orsc.validation.labels import read_labels
    from health_orsc.validation.rubric_review import is_review_file, read_reviews
    from health_orsc.validation.validity import (
        ValidationResult,
        ValidityReport,
        validity_report,
        write_validation_snapshot,
    )

    snapshot = Path(args.snapshot)
    n = _round(args)
    verified(snapshot, "validate")
    manifest = load_manifest(snapshot)
    check_snapshot_name(snapshot.parent.parent, args.name, snapshot.parent)  # before reading any label
    paths = [Path(p) for p in args.labels]
    review_paths = [p for p in paths if p.is_file() and is_review_file(p)]  # `orsc annotate --rubrics`
    label_paths = [p for p in paths if p not in review_paths]
    built = recorded_config(manifest)  # the validation gate and the level the sample was sized for
    if n > 1:
        later = _later_round(snapshot, n, args.target_halfwidth, label_paths, manifest.digest)
        rows, sample, labels, draws = later.rows, later.sample, later.labels, later.draws
        aggregate = args.aggregate or later.aggregate
    else:
        sample = read_sample(snapshot)
        labels = read_labels(label_paths, {s["id"] for s in sample}, manifest.digest)
        rows, draws, aggregate = read_rows(snapshot), None, args.aggregate or built.validation.aggregate
    reviews = None
    if review_paths:
        with_rubric = {r.id for r in rows if r.reason is None and r.rubric is not None}
        reviewable = {s["id"] for s in sample if s["id"] in with_rubric and s.get("round", "1") == str(n)}
        reviews = (later.reviews if n > 1 else []) + read_reviews(review_paths, reviewable, manifest.digest)
    elif n > 1:
        reviews = later.reviews or None
    report = validity_report(rows, sample, labels, built.validation.min_precision, built.sample.confidence,
                             reviews, aggregate=aggregate, draws=draws)
    path = write_validation_snapshot(snapshot, manifest, args.name, rows, sample, labels, report, args.gate,
                                     reviews, later.files if n > 1 else None)
    new = load_manifest(path)
    gated = sum(c.get("human_harmful", 0) for c in new.counts.rejected.values()) if args.gate else None
    result = ValidationResult(snapshot=str(path), digest=new.digest, report_file=str(path / REPORT_FILE),
                              gated=gated, report=ValidityReport.model_validate(report))
    emit(args, result, render.validation)
    return 0


def _later_round(snapshot: Path, n: int, target: float | None, paths: list[Path], digest: str):
    """`orsc validate --round N` (N >= 2): round N's draw after `snapshot`, its labels read
    (each must be of an item of the draw) and joined to the earlier rounds'."""
    from health_orsc.validation.labels import read_labels
    from health_orsc.validation.rounds import later_round

    return later_round(snapshot, n, target, lambda ids: read_labels(
        paths, ids, digest, f"round {n}'s draw (`orsc annotate {snapshot} --round {n}` wrote its tasks)"))


def cmd_calibrate(args: argparse.Namespace) -> int:
    from health_orsc.build.jury import calling_jurors
    from health_orsc.build.stages import classify
    from health_orsc.inputs.load import load_inputs
    from health_orsc.validation.calibrate import (
        calibration_report,
        fit_thresholds,
        judge_gold,
        read_gold,
        score_jurors,
    )

    if not 0 < args.target_recall <= 1:
        raise InputError(None, "--target-recall", f"{args.target_recall} is not a share",
                         "pass a number above 0 and at most 1, e.g. 0.95")
    if args.train:
        return _train(args)
    if args.out is not None:
        raise InputError(None, "--out", "is where --train writes its model",
                         "add --train, or leave out --out")
    if args.labels:
        if len(args.labels) > 1:
            raise InputError(None, "--labels", f"{len(args.labels)} snapshots: the jury is measured on one"
                             " snapshot's labels (several go to --train)", "pass one validation snapshot")
        return _calibrate_on_labels(args)
    config = load_config(args.config)
    if args.fit and not score_jurors(config):
        raise InputError(Path(args.config), "roles.<juror>.scoring", "--fit needs a juror that scores"
                         " with token probabilities, and no juror does",
                         "add 'scoring: logprobs' (or a guard model's 'scoring: guard') to a role listed"
                         " in jury.jurors")
    inputs = load_inputs(config)
    gold = read_gold(Path(args.gold), inputs.taxonomy)
    missing = sorted({g.category for g in gold} - set(inputs.categories))
    if missing:
        raise InputError(Path(args.gold), "category", f"{', '.join(missing)} not among the config's"
                         " categories", "drop those rows, or remove `categories` from the config")
    scores = classify(inputs, [g.prompt for g in gold])
    votes, calls, hits = model_calls(config, "calibrate", "gold", len(gold) * len(calling_jurors(inputs)),
                                     lambda gateway: judge_gold(inputs, gold, gateway, scores))
    report = calibration_report(gold, votes, config.jury.jurors, config.jury.required_benign)
    report.model_calls, report.cache_hits = calls, hits
    if args.fit:
        report.fit = fit_thresholds(gold, votes, config, args.target_recall)
    emit(args, report, lambda r: render.calibration(r, args.target_recall))
    return 0


def _calibrate_on_labels(args: argparse.Namespace) -> int:
    """`orsc calibrate --labels SNAPSHOT`: the jurors on people's labels, no model call."""
    from health_orsc.snapshot.compat import recorded_config
    from health_orsc.snapshot.store import load_manifest
    from health_orsc.validation.calibrate import label_calibration, score_jurors

    snapshot = Path(args.labels[0])
    verified(snapshot, "--labels")
    if args.fit and not score_jurors(recorded_config(load_manifest(snapshot))):
        raise InputError(snapshot, "--fit", "needs a juror that scores with token probabilities, and"
                         " the snapshot's jury has none", "leave out --fit, or pass a snapshot built"
                         " with a `scoring: logprobs` (or guard) juror")
    report = label_calibration(snapshot, args.target_recall if args.fit else None)
    emit(args, report, lambda r: render.label_calibration(r, args.target_recall))
    return 0


def add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-halfwidth", type=float, default=None,
                   help="with --round 2 on: the half-width a stratum's interval must reach (default:"
                        " the last round's, else the snapshot's sample.target_halfwidth); annotate"
                        " and validate of one round need the same")


def _train(args: argparse.Namespace) -> int:
    """`orsc calibrate --train`: a classifier on prompt embeddings, cross-validated."""
    from health_orsc.build.stages import embed
    from health_orsc.core.records import sha256_hex
    from health_orsc.inputs.load import load_inputs
    from health_orsc.validation.calibrate import read_gold
    from health_orsc.validation.classifier import TrainingResult, train, training_data, write_classifier

    if args.out is None:
        raise InputError(None, "--out", "--train needs a directory to write the model to",
                         "pass --out MODEL_DIR (a new directory)")
    if args.fit:
        raise InputError(None, "--fit", "chooses a score juror's threshold; --train fits a classifier",
                         "leave out one of them")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "--out", "exists and is not an empty directory",
                         "pass a new directory to --out (a trained classifier is never overwritten)")
    config = load_config(args.config)
    inputs = load_inputs(config)
    gold_path = Path(args.gold)
    gold = read_gold(gold_path, inputs.taxonomy)
    snapshots = [Path(p) for p in args.labels or []]
    for snapshot in snapshots:
        verified(snapshot, "--labels")
    seeds = None if args.no_seeds else [s.original_question for seeds in inputs.seeds.values() for s in seeds]
    data = training_data([(g.id, g.prompt, g.label == "harmful") for g in gold], gold_path.name,
                         sha256_hex(gold_path.read_bytes()), seeds, snapshots)
    vectors, identity = embed(config, [i.prompt for i in data.items])
    model = train(data, vectors, identity, args.target_recall)
    files = write_classifier(model, out)
    emit(args, TrainingResult.of(model, out, files), render.training)
    return 0


def register(sub) -> None:
    a = command(sub, "annotate", cmd_annotate, "blind annotation tasks for a snapshot's validation sample",
                "Write the validation sample of SNAPSHOT as blind tasks for people: one CSV per annotator"
                " to fill in, or Label Studio's labeling config and task files. --json prints an"
                " AnnotationResult.", "orsc annotate outputs/snapshots/v1 --out annotation/v1 --overlap 40")
    a.add_argument("snapshot", help="snapshot directory")
    a.add_argument("--out", required=True, help="new directory for the task files")
    a.add_argument("--format", choices=("csv", "label-studio"), default="csv",
                   help="csv: one file per annotator to fill in; label-studio: a labeling config"
                        " and one tasks file per annotator (default: %(default)s)")
    a.add_argument("--annotators", type=int, help="people labelling (default: the snapshot's"
                                                  " validation.annotators)")
    a.add_argument("--overlap", type=int, help="items every annotator labels, for agreement; the rest"
                                               " are labelled once (default: validation.overlap, all)")
    a.add_argument("--round", type=int, default=1,
                   help="2, 3, ...: a further round after `orsc validate` of the one before (SNAPSHOT is"
                        " the snapshot that wrote): more items only in strata whose interval is still"
                        " wider than --target-halfwidth, none labelled before (default: %(default)s,"
                        " the validation sample)")
    add_target(a)
    a.add_argument("--rubrics", action="store_true",
                   help="also write rubric review tasks (<annotator>.rubrics.*): each kept prompt's"
                        " criteria for a keep / drop / edit verdict; they show which prompts were kept,"
                        " so hand them out after the labels are in")
    add_json(a)

    v = command(sub, "validate", cmd_validate,
                "import human labels into a new snapshot with a validity report",
                "Read people's labels of SNAPSHOT's validation sample and write a new snapshot beside it"
                " with the labels and the validity report (benign precision with intervals, the jury"
                " against people, agreement). --json prints a ValidationResult.",
                "orsc validate outputs/snapshots/v1 annotation/v1/annotator_*.csv --name v1-validated --gate")
    v.add_argument("snapshot", help="the snapshot the labels are for")
    v.add_argument("labels", nargs="+", help="filled-in CSV files from `orsc annotate`, or Label"
                                             " Studio JSON exports (with --rubrics' review files too)")
    v.add_argument("--name", required=True, help="name of the new snapshot (beside SNAPSHOT)")
    v.add_argument("--gate", action="store_true", help="move kept prompts that people labelled harmful"
                                                       " (by --aggregate) to rejected, reason human_harmful")
    v.add_argument("--round", type=int, default=1,
                   help="the round the labels are of (as `orsc annotate --round` gave it): 2, 3, ...:"
                        " SNAPSHOT is the validation snapshot of the round before, and the new snapshot"
                        " holds every round's labels, estimated with the combined design (default:"
                        " %(default)s)")
    add_target(v)
    v.add_argument("--aggregate", choices=AGGREGATES, default=None,
                   help="how an item's labels make its label: the majority, or Dawid-Skene's estimate"
                        " (each annotator weighed by their estimated accuracy); default: the"
                        " snapshot's validation.aggregate (majority)")
    add_json(v)

    c = command(sub, "calibrate", cmd_calibrate,
                "measure every juror and the k-of-n rule on labelled prompts",
                "Ask every juror of the config about each prompt of a gold file (labelled harmful or"
                " benign) and measure each, and the k-of-n rule, against the labels; with --fit, choose"
                " each score juror's threshold. --json prints a CalibrationReport.",
                "orsc calibrate --fit --target-recall 0.95")
    add_config(c)
    c.add_argument("--gold", default=str(DEFAULT_GOLD),
                   help="CSV: id, category, label (benign|harmful), prompt[, original_question]"
                        " (default: the project's jury.csv)")
    c.add_argument("--labels", metavar="VALIDATED_SNAPSHOT", nargs="+",
                   help="measure the snapshot's jurors on people's labels (a snapshot `orsc validate`"
                        " wrote), design-weighted, instead of on the gold file; no model call. With"
                        " --train: train on these snapshots' labels too (one or more)")
    c.add_argument("--train", action="store_true",
                   help="fit a classifier (logistic regression on the prompts' embeddings) on the gold"
                        " file, the seeds' harmful questions and --labels' people's labels; report its"
                        " cross-validated AUROC, recall and specificity; write it to --out")
    c.add_argument("--out", metavar="MODEL_DIR", help="with --train: a new directory for the model")
    c.add_argument("--no-seeds", action="store_true",
                   help="with --train: leave out the seeds' original questions (known harmful)")
    c.add_argument("--fit", action="store_true",
                   help="for each `scoring: logprobs` juror, choose the threshold that reaches"
                        " --target-recall on the gold file (or on the labels)")
    c.add_argument("--target-recall", type=float, default=0.95,
                   help="share of the gold file's harmful prompts a fitted juror must catch"
                        " (with --fit; default %(default)s)")
    add_json(c)
