"""classifier: the model file of a classifier juror (`scoring: classifier`), and its scores.

`orsc calibrate --train` (health_orsc.validation.classifier) writes `classifier.json` into a
model directory: a logistic regression on L2-normalised prompt embeddings, as JSON (its
coefficients, never a pickle), with the embedding model it was trained on, each training
source and its digest, and its cross-validated figures.

Cross-fitting: every training prompt belongs to a group (a validation snapshot's labels
form one group; the gold file's and the seeds' prompts are spread over a few groups by a
hash of their text), and the file holds a fit without each group. A prompt that was in the
training data is scored by the fit without its group, so no prompt is ever judged by a fit
that saw its label, and a snapshot's labels never judge that snapshot's prompts
(`Classifier.p_harmful`). Every other prompt is scored by the fit on everything.

Example:
    model = read_classifier(Path("classifiers/health-gold"))
    p = model.p_harmful(vectors, prompts)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from health_orsc.core.errors import InputError
from health_orsc.core.stats import OperatingPoint

CLASSIFIER_FILE = "classifier.json"


class TrainingSource(BaseModel):
    kind: Literal["gold", "seeds", "labels"]
    name: str                 # the gold file's name, "seeds", a validation snapshot's name
    digest: str               # sha256 of the file, of the seeds' questions, or the snapshot's digest
    items: int
    harmful: int


class Fit(BaseModel):
    """One fitted logistic regression: P(harmful) = logistic(coef . x + intercept)."""
    coef: list[float]
    intercept: float
    items: int
    harmful: int


class CrossValidated(BaseModel):
    """Figures on held-out prompts: each prompt scored by the fit without its group."""
    groups: int
    point: OperatingPoint      # AUROC, and recall / specificity at the target recall's threshold
    recall_at_half: float | None
    specificity_at_half: float | None


class Classifier(BaseModel):
    """classifier.json."""
    format: Literal["health-orsc-classifier/1"] = "health-orsc-classifier/1"
    kind: Literal["logistic-regression"] = "logistic-regression"
    embedding_model: str       # the embedder's identity (health_orsc.build.dedup.Embedder)
    dimensions: int
    sources: list[TrainingSource]
    conflicts: int             # prompts the sources labelled both ways, left out
    training_digest: str       # sha256 of the training rows (label, prompt), sorted
    fit: Fit                   # on every training prompt
    without: dict[str, Fit]    # group -> the fit without that group's prompts
    groups: dict[str, str]     # a training prompt's hash (prompt_hash) -> its group
    cross_validated: CrossValidated

    def p_harmful(self, vectors: np.ndarray, prompts: list[str]) -> list[float]:
        """P(harmful) of each prompt (its embedding a row of `vectors`), by the fit that never
        saw its label."""
        if len(prompts) and vectors.shape[1] != self.dimensions:
            raise ValueError(f"vectors of {vectors.shape[1]} dimensions; the classifier takes"
                             f" {self.dimensions}")
        by_fit: dict[str | None, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_fit.setdefault(self.groups.get(prompt_hash(prompt)), []).append(i)
        out = np.zeros(len(prompts))
        for group, rows in by_fit.items():
            fit = self.fit if group is None else self.without[group]
            out[rows] = logistic_regression(fit).predict_proba(vectors[rows])[:, 1]
        return [float(p) for p in out]


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.strip().encode()).hexdigest()[:16]


def logistic_regression(fit: Fit):
    """A scikit-learn LogisticRegression holding `fit` (its coefficients; no training)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression()
    model.classes_ = np.array([False, True])
    model.coef_ = np.array([fit.coef])
    model.intercept_ = np.array([fit.intercept])
    return model


def classifier_digest(directory: Path) -> str:
    """sha256 of a model directory's classifier.json: what a juror's fingerprint names."""
    return hashlib.sha256((directory / CLASSIFIER_FILE).read_bytes()).hexdigest()


def read_classifier(directory: Path, field: str | None = None) -> Classifier:
    """A model directory's classifier; InputError (naming `field`) when it is not one."""
    path = directory / CLASSIFIER_FILE
    if not path.is_file():
        raise InputError(directory, field, f"has no {CLASSIFIER_FILE}: not a directory `orsc calibrate"
                         " --train` wrote", "pass the --out directory of `orsc calibrate --train`")
    try:
        return Classifier.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as err:
        raise InputError(path, field, f"is not a classifier ({str(err).splitlines()[0][:120]})",
                         "train it again with `orsc calibrate --train`") from err
