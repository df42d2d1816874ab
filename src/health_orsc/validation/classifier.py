"""classifier: train a classifier juror on labelled prompts (`orsc calibrate --train`).

A logistic regression (scikit-learn's LogisticRegression, class-balanced, its default
regularisation) on the L2-normalised sentence embeddings the dedup stage computes (the
config's embedder, through the same embedding cache), so scoring a prompt costs no model
call. Its training prompts come from:
- a gold file (`id, category, label, prompt`; by default the shipped gold/jury.csv);
- the seeds' `original_question`s, the harmful requests the benchmark's prompts neighbour
  (known harmful; leave them out with `--no-seeds`);
- people's labels in validation snapshots (`orsc validate`), each item's label by the
  report's aggregation, over every round.

A prompt that two sources label differently is left out (and counted). Cross-fitting
(health_orsc.core.classifier): each validation snapshot's labels are one group, and the
gold file's and the seeds' prompts are spread over GOLD_GROUPS groups by a hash of their
text; a fit without each group is kept with the model, and the cross-validated figures are
those fits' scores of their held-out groups (scikit-learn's LeaveOneGroupOut): AUROC, and
recall and specificity at the highest threshold that reaches the target recall
(health_orsc.core.stats.operating_point) and at 0.5. Never figures on its own training data.

Example:
    data = training_data(gold, "jury.csv", digest, seed_questions, [Path("outputs/snapshots/v1-validated")])
    model = train(data, vectors, embedder.identity, target_recall=0.95)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from health_orsc.core.classifier import (
    CLASSIFIER_FILE,
    Classifier,
    CrossValidated,
    Fit,
    TrainingSource,
    logistic_regression,
    prompt_hash,
)
from health_orsc.core.errors import InputError
from health_orsc.core.stats import operating_point

GOLD_GROUPS = 5


class TrainingItem(BaseModel):
    prompt: str
    harmful: bool
    source: str               # the TrainingSource's name
    group: str                # cross-fitting: a snapshot's digest, or gold-K for the gold file and seeds


class TrainingData(BaseModel):
    items: list[TrainingItem]
    sources: list[TrainingSource]
    conflicts: int            # prompts labelled both ways by the sources, left out


def _gold_group(prompt: str) -> str:
    return f"gold-{int(prompt_hash(prompt), 16) % GOLD_GROUPS}"


def training_data(gold: list[tuple[str, str, bool]], gold_name: str, gold_digest: str,
                  seeds: list[str] | None, snapshots: list[Path]) -> TrainingData:
    """The training prompts: `gold` (id, prompt, harmful) from the file `gold_name`, the
    seeds' harmful questions (`seeds`, or None to leave them out) and people's labels in the
    validation `snapshots` (each verified by the caller)."""
    items: list[TrainingItem] = []
    sources: list[TrainingSource] = []

    def add(kind: str, name: str, digest: str, rows: list[tuple[str, bool]], group: str | None) -> None:
        items.extend(TrainingItem(prompt=p.strip(), harmful=h, source=name, group=group or _gold_group(p))
                     for p, h in rows)
        sources.append(TrainingSource(kind=kind, name=name, digest=digest, items=len(rows),
                                      harmful=sum(h for _, h in rows)))

    add("gold", gold_name, gold_digest, [(p, h) for _, p, h in gold], None)
    if seeds:
        unique = sorted({q.strip() for q in seeds})
        add("seeds", "seeds", hashlib.sha256("\n".join(unique).encode()).hexdigest(),
            [(q, True) for q in unique], None)
    for snapshot in snapshots:
        name, digest, rows = people_labels(snapshot)
        add("labels", name, digest, rows, digest)
    said: dict[str, set[bool]] = {}
    for item in items:
        said.setdefault(item.prompt, set()).add(item.harmful)
    conflicting = {p for p, labels in said.items() if len(labels) > 1}
    kept: dict[str, TrainingItem] = {}
    for item in items:
        if item.prompt not in conflicting:
            kept.setdefault(item.prompt, item)
    return TrainingData(items=list(kept.values()), sources=sources, conflicts=len(conflicting))


def people_labels(snapshot: Path) -> tuple[str, str, list[tuple[str, bool]]]:
    """A validation snapshot's name, digest and its decided items as (prompt, harmful)."""
    from health_orsc.snapshot.handle import read_rows
    from health_orsc.snapshot.store import REPORT_FILE, load_manifest
    from health_orsc.validation.validity import decided_labels

    manifest = load_manifest(snapshot)
    if manifest.kind != "validation":
        raise InputError(snapshot, "--labels", f"is a snapshot of kind {manifest.kind}, without people's"
                         " labels", "pass a snapshot `orsc validate` wrote")
    report = json.loads((snapshot / REPORT_FILE).read_text(encoding="utf-8"))
    decided = decided_labels(snapshot, report)
    prompts = {r.id: r.prompt for r in read_rows(snapshot)}
    rows = [(prompts[pid], label == "harmful") for pid, label in sorted(decided.items()) if label is not None]
    return snapshot.name, manifest.digest, rows


def train(data: TrainingData, vectors: np.ndarray, embedding_model: str, target_recall: float) -> Classifier:
    """Fit on every item and without each group, and measure on the held-out groups.
    `vectors`: the items' embeddings, in order."""
    from sklearn.model_selection import LeaveOneGroupOut

    y = np.array([i.harmful for i in data.items])
    groups = np.array([i.group for i in data.items])
    smaller = int(min(y.sum(), len(y) - y.sum()))
    if smaller < 2:
        raise InputError(None, "label", f"{int(y.sum())} harmful and {len(y) - int(y.sum())} benign"
                         " training prompts: a classifier needs both, at least 2 of each",
                         "add labelled prompts of the missing kind (--gold, --labels)")
    held_out = np.zeros(len(y))
    without = {}
    for train_rows, test_rows in LeaveOneGroupOut().split(vectors, y, groups):
        group = str(groups[test_rows[0]])
        if len(set(y[train_rows])) < 2:
            raise InputError(None, "label", f"without the prompts of {group}, every training prompt is"
                             f" {'harmful' if y[train_rows].all() else 'benign'}: the cross-fit has"
                             " nothing to learn from", "add labelled prompts of the other kind")
        without[group] = _fit(vectors[train_rows], y[train_rows])
        held_out[test_rows] = logistic_regression(without[group]).predict_proba(vectors[test_rows])[:, 1]
    point = operating_point(list(y), list(held_out), target_recall)
    half = held_out >= 0.5
    cross = CrossValidated(groups=len(without), point=point,
                           recall_at_half=round(float(half[y].mean()), 4),
                           specificity_at_half=round(float((~half[~y]).mean()), 4))
    rows = sorted(f"{int(i.harmful)}\t{i.prompt}" for i in data.items)
    return Classifier(embedding_model=embedding_model, dimensions=int(vectors.shape[1]), sources=data.sources,
                      conflicts=data.conflicts,
                      training_digest=hashlib.sha256("\n".join(rows).encode()).hexdigest(),
                      fit=_fit(vectors, y), without=without,
                      groups={prompt_hash(i.prompt): i.group for i in data.items}, cross_validated=cross)


def _estimator():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(class_weight="balanced", max_iter=5000)


def _fit(x: np.ndarray, y: np.ndarray) -> Fit:
    model = _estimator().fit(x, y)
    return Fit(coef=[float(c) for c in model.coef_[0]], intercept=float(model.intercept_[0]),
               items=len(y), harmful=int(y.sum()))


def write_classifier(model: Classifier, out: Path) -> list[Path]:
    """The model directory `out` (new, or empty): classifier.json."""
    from health_orsc.core.files import write_new_dir

    return write_new_dir(out, {CLASSIFIER_FILE: model.model_dump_json(indent=2) + "\n"}, "--out",
                         "pass a new directory to --out (a trained classifier is never overwritten)")


class TrainingResult(BaseModel):
    """What `orsc calibrate --train` wrote (and `--json` prints)."""
    out: str
    files: list[str]
    items: int
    harmful: int
    conflicts: int
    sources: list[TrainingSource]
    cross_validated: CrossValidated
    embedding_model: str

    @classmethod
    def of(cls, model: Classifier, out: Path, files: list[Path]) -> TrainingResult:
        return cls(out=str(out), files=[str(f) for f in files], items=model.fit.items,
                   harmful=model.fit.harmful, conflicts=model.conflicts, sources=model.sources,
                   cross_validated=model.cross_validated, embedding_model=model.embedding_model)
