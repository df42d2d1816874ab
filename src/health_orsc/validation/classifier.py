"""classifier: a logistic regression on prompt embeddings, trained on labelled prompts.

`orsc calibrate --train` fits it: scikit-learn's LogisticRegression (class-balanced, its
default regularisation) on the L2-normalised sentence embeddings the dedup stage computes
(the config's embedder, through the same embedding cache), so scoring a prompt costs no
model call. Its training prompts come from:
- a gold file (`id, category, label, prompt`; by default the shipped gold/jury.csv);
- the seeds' `original_question`s, the harmful requests the benchmark's prompts neighbour
  (known harmful; leave them out with `--no-seeds`);
- people's labels in validation snapshots (`orsc validate`), each item's label by the
  report's aggregation, over every round.

A prompt that two sources label differently is left out (and counted). Its quality is
measured by stratified 5-fold cross-validation (scikit-learn's `cross_val_predict`), never
on its own training data: AUROC, and the recall and specificity at the highest threshold
that reaches the target recall (health_orsc.core.stats.operating_point) and at 0.5.

The model is written as one JSON file, `classifier.json` (coefficients, never a pickle):
the embedding model's identity (a vector of another model means nothing to it), each
training source with its digest (the gold file's sha256, the seeds' questions', a
snapshot's MANIFEST digest) and a digest of the training rows. Cross-fitting: for each
validation snapshot it learned from, it also holds a fit without that snapshot's labels
and the hashes of the prompts it labelled, so a prompt is never judged by a fit that saw
its own label (`Classifier.p_harmful`).

Example:
    data = training_data(gold_items, seed_questions, [Path("outputs/snapshots/v1-validated")])
    model = train(data, embedder, target_recall=0.95)
    model.p_harmful(vectors, prompts)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from health_orsc.core.errors import InputError
from health_orsc.core.stats import OperatingPoint, operating_point

CLASSIFIER_FILE = "classifier.json"
FORMAT = "health-orsc-classifier/1"
FOLDS = 5
SEED = 0


class TrainingItem(BaseModel):
    prompt: str
    harmful: bool
    source: str               # the TrainingSource's name


class TrainingSource(BaseModel):
    kind: Literal["gold", "seeds", "labels"]
    name: str                 # the gold file's name, "seeds", a validation snapshot's name
    digest: str               # sha256 of the file, of the seeds' questions, or the snapshot's digest
    items: int
    harmful: int


class TrainingData(BaseModel):
    items: list[TrainingItem]
    sources: list[TrainingSource]
    conflicts: int            # prompts labelled both ways by the sources, left out
    labelled: dict[str, list[str]]  # a snapshot's digest -> hashes of the prompts it labelled


class Fit(BaseModel):
    """One fitted logistic regression: P(harmful) = logistic(coef . x + intercept)."""
    coef: list[float]
    intercept: float
    items: int
    harmful: int


class CrossValidated(BaseModel):
    folds: int
    point: OperatingPoint      # at the target recall
    recall_at_half: float | None
    specificity_at_half: float | None


class Classifier(BaseModel):
    """classifier.json."""
    format: Literal["health-orsc-classifier/1"] = FORMAT
    kind: Literal["logistic-regression"] = "logistic-regression"
    embedding_model: str       # the embedder's identity (health_orsc.build.dedup.Embedder)
    dimensions: int
    sources: list[TrainingSource]
    conflicts: int
    training_digest: str       # sha256 of the training rows (label, prompt), sorted
    fit: Fit                   # on every training item
    without: dict[str, Fit]    # a snapshot's digest -> fitted without that snapshot's labels
    labelled: dict[str, list[str]]
    cross_validated: CrossValidated

    def p_harmful(self, vectors: np.ndarray, prompts: list[str]) -> list[float]:
        """P(harmful) of each prompt (its embedding a row of `vectors`), by the fit that never
        saw a label of that prompt."""
        if vectors.shape[1] != self.dimensions:
            raise ValueError(f"vectors of {vectors.shape[1]} dimensions; the classifier takes"
                             f" {self.dimensions}")
        seen = {h: d for d, hashes in self.labelled.items() for h in hashes}
        out = np.zeros(len(prompts))
        groups: dict[str | None, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(seen.get(prompt_hash(prompt)), []).append(i)
        for digest, rows in groups.items():
            fit = self.fit if digest is None else self.without[digest]
            out[rows] = _model(fit).predict_proba(vectors[rows])[:, 1]
        return [float(p) for p in out]


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.strip().encode()).hexdigest()[:16]


def _model(fit: Fit):
    """A scikit-learn LogisticRegression holding `fit` (no training: its coefficients)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression()
    model.classes_ = np.array([False, True])
    model.coef_ = np.array([fit.coef])
    model.intercept_ = np.array([fit.intercept])
    return model


def _estimator():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(class_weight="balanced", max_iter=5000)


def training_data(gold: list[tuple[str, str, bool]], gold_name: str, gold_digest: str,
                  seeds: list[str] | None, snapshots: list[Path]) -> TrainingData:
    """The training prompts: `gold` (id, prompt, harmful) from the file `gold_name`, the
    seeds' harmful questions (`seeds`, or None to leave them out) and people's labels in the
    validation `snapshots` (each verified by the caller)."""
    items: list[TrainingItem] = []
    sources: list[TrainingSource] = []
    labelled: dict[str, list[str]] = {}

    def add(kind: str, name: str, digest: str, rows: list[tuple[str, bool]]) -> None:
        items.extend(TrainingItem(prompt=p, harmful=h, source=name) for p, h in rows)
        sources.append(TrainingSource(kind=kind, name=name, digest=digest, items=len(rows),
                                      harmful=sum(h for _, h in rows)))

    add("gold", gold_name, gold_digest, [(p, h) for _, p, h in gold])
    if seeds:
        unique = sorted(set(seeds))
        add("seeds", "seeds", hashlib.sha256("\n".join(unique).encode()).hexdigest(),
            [(q, True) for q in unique])
    for snapshot in snapshots:
        name, digest, rows = people_labels(snapshot)
        add("labels", name, digest, rows)
        labelled[digest] = sorted({prompt_hash(p) for p, _ in rows})
    said: dict[str, set[bool]] = {}
    for item in items:
        said.setdefault(item.prompt.strip(), set()).add(item.harmful)
    conflicting = {p for p, labels in said.items() if len(labels) > 1}
    kept: dict[str, TrainingItem] = {}
    for item in items:
        if item.prompt.strip() not in conflicting:
            kept.setdefault(item.prompt.strip(), item)
    return TrainingData(items=list(kept.values()), sources=sources, conflicts=len(conflicting),
                        labelled=labelled)


def people_labels(snapshot: Path) -> tuple[str, str, list[tuple[str, bool]]]:
    """A validation snapshot's name, digest and its decided items as (prompt, harmful)."""
    from health_orsc.snapshot.handle import read_rows
    from health_orsc.snapshot.store import REPORT_FILE, load_manifest
    from health_orsc.validation.validity import aggregate_of, by_item, item_labels, stored_labels

    manifest = load_manifest(snapshot)
    if manifest.kind != "validation":
        raise InputError(snapshot, "--labels", f"is a snapshot of kind {manifest.kind}, without people's"
                         " labels", "pass a snapshot `orsc validate` wrote")
    report = json.loads((snapshot / REPORT_FILE).read_text(encoding="utf-8"))
    decided, _ = item_labels(by_item(stored_labels(snapshot)), aggregate_of(report))
    prompts = {r.id: r.prompt for r in read_rows(snapshot)}
    rows = [(prompts[pid], label == "harmful") for pid, label in sorted(decided.items()) if label is not None]
    return snapshot.name, manifest.digest, rows


def train(data: TrainingData, vectors: np.ndarray, embedding_model: str, target_recall: float) -> Classifier:
    """Fit on every item (and, per labelled snapshot, without its labels), and measure by
    cross-validation. `vectors`: the items' embeddings, in order."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.array([i.harmful for i in data.items])
    smaller = int(min(y.sum(), len(y) - y.sum()))
    if smaller < 2:
        raise InputError(None, "label", f"{int(y.sum())} harmful and {len(y) - int(y.sum())} benign"
                         " training prompts: a classifier needs both, at least 2 of each",
                         "add labelled prompts of the missing kind (--gold, --labels)")
    folds = min(FOLDS, smaller)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
    p = cross_val_predict(_estimator(), vectors, y, cv=cv, method="predict_proba")[:, 1]
    point = operating_point(list(y), list(p), target_recall)
    half = p >= 0.5
    cross = CrossValidated(folds=folds, point=point,
                           recall_at_half=round(float(half[y].mean()), 4),
                           specificity_at_half=round(float((~half[~y]).mean()), 4))
    without = {}
    for digest in data.labelled:
        names = {s.name for s in data.sources if s.kind == "labels" and s.digest == digest}
        rest = [i for i, item in enumerate(data.items) if item.source not in names]
        if len(set(y[rest])) == 2:
            without[digest] = _fit(vectors[rest], y[rest])
    rows = sorted(f"{int(i.harmful)}\t{i.prompt.strip()}" for i in data.items)
    return Classifier(embedding_model=embedding_model, dimensions=int(vectors.shape[1]), sources=data.sources,
                      conflicts=data.conflicts,
                      training_digest=hashlib.sha256("\n".join(rows).encode()).hexdigest(),
                      fit=_fit(vectors, y), without=without, labelled=data.labelled, cross_validated=cross)


def _fit(x: np.ndarray, y: np.ndarray) -> Fit:
    model = _estimator().fit(x, y)
    return Fit(coef=[float(c) for c in model.coef_[0]], intercept=float(model.intercept_[0]),
               items=len(y), harmful=int(y.sum()))


def write_classifier(model: Classifier, out: Path) -> list[Path]:
    """The model directory `out` (new, or empty): classifier.json."""
    from health_orsc.core.files import write_new_dir

    return write_new_dir(out, {CLASSIFIER_FILE: model.model_dump_json(indent=2) + "\n"}, "--out",
                         "pass a new directory to --out (a trained classifier is never overwritten)")


def read_classifier(directory: Path) -> Classifier:
    """A model directory's classifier; InputError naming the file when it is not one."""
    from pydantic import ValidationError

    path = directory / CLASSIFIER_FILE
    if not path.is_file():
        raise InputError(directory, CLASSIFIER_FILE, "missing: not a directory `orsc calibrate --train`"
                         " wrote", "pass the --out directory of `orsc calibrate --train`")
    try:
        return Classifier.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as err:
        raise InputError(path, None, f"is not a classifier ({err.errors()[0]['msg']})",
                         "train it again with `orsc calibrate --train`") from err


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
    cross_fitted: list[str]    # snapshots whose prompts are judged by a fit without their labels

    @classmethod
    def of(cls, model: Classifier, out: Path, files: list[Path]) -> TrainingResult:
        names = {s.digest: s.name for s in model.sources if s.kind == "labels"}
        return cls(out=str(out), files=[str(f) for f in files], items=model.fit.items,
                   harmful=model.fit.harmful, conflicts=model.conflicts, sources=model.sources,
                   cross_validated=model.cross_validated, embedding_model=model.embedding_model,
                   cross_fitted=[names[d] for d in model.without])
