"""dedup: off-topic rewrites, then near-duplicate removal across the whole build (within
and across categories).

Input: candidates in canonical order (taxonomy order of categories, then the
generation order: each template's own rendering before its rewrites). Output: one
Decision per candidate.

- A rewrite whose cosine similarity to its template prompt (`template_text`) is below
  `min_similarity` has drifted off its seed: rejected with reason `off_topic_rewrite`
  and that similarity. The template prompts are candidates themselves, so their
  embeddings are the dedup embeddings: the check costs nothing extra.
- The keeper of a group of near-duplicates is the earliest candidate (lowest index);
  a later candidate whose cosine similarity to an already *kept* one reaches the
  threshold is rejected with reason `duplicate`, `duplicate_of` = that keeper's id and
  the similarity. Only one member of a pair is ever dropped. A rewrite that adds nothing
  to its template is such a duplicate.

Example:
    decisions = dedup_candidates(candidates, DedupConfig(threshold=0.9), Embedder(), min_similarity=0.5)
"""

from __future__ import annotations

import functools
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from health_orsc.cache.embeddings import EmbeddingCache
from health_orsc.core.config import BuildConfig, DedupConfig
from health_orsc.core.files import default_embedding_model, model_identity
from health_orsc.core.records import Candidate, Decision
from health_orsc.llm import Gateway, Usage
from health_orsc.runtime.progress import TaskProgress

SIMILARITY_EPS = 1e-5
EXACT_MAX = 50_000            # rows up to which the search is exact
EXACT_BLOCK_CELLS = 1 << 25   # similarity cells per block of the exact search (128 MB)
IVF_LISTS_PER_SQRT_N = 2      # IVF cells: 2 * sqrt(n)
IVF_NPROBE = 16               # cells searched per vector
PROGRESS_SLICE = 512          # texts per encode call (a few seconds on a 2-core CPU)


Store = Callable[[list[tuple[int, np.ndarray]]], None]


class Embedder:
    """Texts to L2-normalised vectors: a sentence-transformers model loaded from a local
    directory (once per process), or with `gateway` and `role` an endpoint's
    /v1/embeddings in requests of `batch_size` texts. With a cache, only texts this model
    has not embedded before are encoded."""

    _models: dict[str, object] = {}
    _lock = threading.Lock()
    _encoding = threading.Lock()  # one local encode at a time: torch uses every core for one

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 32,
                 cache: EmbeddingCache | None = None, progress: TaskProgress | None = None,
                 gateway: Gateway | None = None, role: str | None = None):
        self.model_path = str(model_path or default_embedding_model())
        self.batch_size = batch_size
        self.cache = cache
        self.progress = progress  # texts embedded (or found in the cache) so far
        self.gateway, self.role = gateway, role
        self.usage = Usage()  # the embedder role's calls

    @classmethod
    def for_config(cls, config: BuildConfig, cache: EmbeddingCache | None = None,
                   progress: TaskProgress | None = None, gateway: Gateway | None = None) -> Embedder:
        """The config's embedder: its `dedup.embedder` role through `gateway`, or the local model."""
        dedup = config.dedup
        if dedup.embedder is None:
            return cls(dedup.model_path, dedup.batch_size, cache, progress)
        if gateway is None:
            raise ValueError("an embedder role needs the gateway")
        return cls(None, dedup.batch_size, cache, progress, gateway, dedup.embedder)

    @functools.cached_property
    def identity(self) -> str:
        """The model, in the cache key: `model@endpoint` of the role, or a hash of the local files."""
        if self.role is not None:
            return self.gateway.config.embedding_identity()
        return model_identity(self.model_path)

    def _model(self):
        with self._lock:
            if self.model_path not in self._models:
                # Belt and braces: a local path never touches the hub, and offline
                # mode makes any accidental hub lookup fail instead of downloading.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()  # the build shows its own progress

                self._models[self.model_path] = SentenceTransformer(self.model_path, device="cpu")
            return self._models[self.model_path]

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype="float32")
        if self.progress:
            self.progress.expect(len(texts))
        if self.cache is None:
            return self._encode(texts)
        keys = [hashlib.sha256(f"{self.identity}\0{t}".encode()).hexdigest() for t in texts]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        if self.progress:
            self.progress.advance(len(texts) - len(todo), cached=True)
        if todo:
            todo_keys = list(todo)

            def store(parts: list[tuple[int, np.ndarray]]) -> None:
                self.cache.put_many([(todo_keys[start + i], v.tobytes())
                                     for start, vectors in parts for i, v in enumerate(vectors)])

            fresh = self._encode(list(todo.values()), store)
            found.update(zip(todo_keys, (v.tobytes() for v in fresh), strict=True))
        return np.stack([np.frombuffer(found[k], dtype="float32") for k in keys])

    def _encode(self, texts: list[str], store: Store | None = None) -> np.ndarray:
        """The texts' vectors; `store` gets them part by part as they are made, as (first
        text's index, vectors), so a cache is written while the rest are encoded."""
        if self.role is not None:
            return self._encode_remote(texts, store)
        # In slices of PROGRESS_SLICE texts, so progress moves every few seconds.
        with self._encoding:
            model = self._model()
            parts = []
            for i in range(0, len(texts), PROGRESS_SLICE):
                chunk = texts[i:i + PROGRESS_SLICE]
                parts.append(model.encode(chunk, batch_size=self.batch_size, normalize_embeddings=True,
                                          convert_to_numpy=True))
                if store:
                    store([(i, parts[-1])])
                if self.progress:
                    self.progress.advance(len(chunk))
        return np.ascontiguousarray(np.concatenate(parts), dtype="float32")

    def _encode_remote(self, texts: list[str], store: Store | None) -> np.ndarray:
        """Requests of `batch_size` texts, as many in flight as the endpoint allows; this
        thread stores the answered batches while the others are still on their way."""
        gateway, progress = self.gateway, self.progress
        answered: queue.SimpleQueue = queue.SimpleQueue()

        async def call(start: int, chunk: list[str]) -> np.ndarray:
            vectors = await gateway.embed(self.role, chunk)
            if progress:
                progress.advance(len(chunk))
            answered.put((start, vectors))
            return vectors

        starts = range(0, len(texts), self.batch_size)
        future = gateway.submit(gateway.gather(
            [functools.partial(call, i, texts[i:i + self.batch_size]) for i in starts]), self.usage)
        stored = 0
        while stored < len(starts) and not (future.done() and answered.empty()):
            try:
                parts = [answered.get(timeout=0.1)]
            except queue.Empty:
                continue
            while not answered.empty():
                parts.append(answered.get())
            if store:
                store(parts)
            stored += len(parts)
        return np.ascontiguousarray(np.concatenate(future.result()), dtype="float32")


def near_duplicate_pairs(vectors: np.ndarray, threshold: float,
                         exact_max: int = EXACT_MAX) -> dict[int, list[tuple[int, float]]]:
    """For each row, the earlier rows whose cosine similarity is >= threshold.

    Vectors must be L2-normalised (inner product = cosine). Up to `exact_max`
    rows the search is exact (every pair); beyond, a faiss IVF index finds the
    pairs (bench/ measures its recall of planted near-duplicates).
    """
    if len(vectors) == 0:
        return {}
    # float32 dot products of equal unit vectors can land just below 1: the rule is
    # "at or above", so compare with a hair of slack.
    floor = float(threshold) - SIMILARITY_EPS
    if len(vectors) <= exact_max:
        i, j, s = _exact_pairs(vectors, floor)
    else:
        i, j, s = _ivf_pairs(vectors, floor)
    pairs: dict[int, list[tuple[int, float]]] = {}
    for a, b, sim in zip(i.tolist(), j.tolist(), s.tolist(), strict=True):
        pairs.setdefault(a, []).append((b, sim))
    return pairs


def _exact_pairs(vectors: np.ndarray, floor: float) -> tuple[np.ndarray, ...]:
    """Blocked matrix multiply over the lower triangle (j < i): half the work of a
    full search, and numpy's BLAS, which on this class of CPU beats faiss's flat
    index (see bench/README.md)."""
    n = len(vectors)
    block = max(256, EXACT_BLOCK_CELLS // n)
    out_i, out_j, out_s = [], [], []
    for a in range(0, n, block):
        b = min(a + block, n)
        sims = vectors[a:b] @ vectors[:b].T
        rows, cols = np.nonzero(sims >= floor)
        earlier = cols < rows + a
        out_i.append(rows[earlier] + a)
        out_j.append(cols[earlier])
        out_s.append(sims[rows[earlier], cols[earlier]])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def _ivf_pairs(vectors: np.ndarray, floor: float) -> tuple[np.ndarray, ...]:
    """Range search on a faiss IVF-Flat index: each vector is compared with the
    vectors in its IVF_NPROBE nearest k-means cells only."""
    n, dim = vectors.shape
    nlist = max(64, int(IVF_LISTS_PER_SQRT_N * np.sqrt(n)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    index.nprobe = IVF_NPROBE
    lims, sims, ids = index.range_search(vectors, floor)
    rows = np.repeat(np.arange(n), np.diff(lims).astype(np.int64))
    earlier = (ids < rows) & (sims >= floor)
    return rows[earlier], ids[earlier], sims[earlier]


def embedding_texts(keepers: list[Candidate], candidates: list[Candidate]) -> list[str]:
    """What dedup embeds: every prompt (keepers first), then the template prompts of the
    candidates' rewrites (for the off-topic check) that are not among them. A template
    prompt is embedded once, as the candidate it also is (variant 0)."""
    texts = [c.prompt for c in [*keepers, *candidates]]
    known = set(texts)
    return texts + [t for t in dict.fromkeys(c.template_text for c in candidates if c.is_rewrite)
                    if t not in known]


def dedup_candidates(candidates: list[Candidate], cfg: DedupConfig, embedder: Embedder,
                     keepers: list[Candidate] = (), min_similarity: float | None = None) -> list[Decision]:
    """`keepers` are prompts already in the benchmark (carried over from a base snapshot):
    they come first, are always kept, and get no Decision of their own. `min_similarity`
    None: no off-topic check."""
    pool = [*keepers, *candidates]
    texts = embedding_texts(keepers, candidates)
    embedded = embedder.encode(texts)
    row_of = {text: i for i, text in enumerate(texts)}
    vectors = embedded[:len(pool)]
    pairs = near_duplicate_pairs(vectors, cfg.threshold, cfg.exact_max)
    kept: set[int] = set(range(len(keepers)))
    decisions = []
    for i, cand in enumerate(pool):
        if i < len(keepers):
            continue
        if cand.is_rewrite and min_similarity is not None:
            on_topic = float(vectors[i] @ embedded[row_of[cand.template_text]])
            if on_topic < min_similarity:
                decisions.append(Decision(candidate=cand, kept=False, reason="off_topic_rewrite",
                                          similarity=round(on_topic, 4)))
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
