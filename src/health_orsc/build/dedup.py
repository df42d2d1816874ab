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
import itertools
import mmap
import os
import queue
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from health_orsc.cache.embeddings import EmbeddingCache
from health_orsc.core.config import BuildConfig, DedupConfig
from health_orsc.core.files import default_embedding_model, model_identity
from health_orsc.core.records import Candidate, Decision, StageCounts, iter_jsonl, slices, write_jsonl
from health_orsc.llm import Gateway, Usage
from health_orsc.runtime.progress import TaskProgress

SIMILARITY_EPS = 1e-5
EXACT_MAX = 50_000            # rows up to which the search is exact
EXACT_BLOCK_CELLS = 1 << 25   # similarity cells per block of the exact search (128 MB)
IVF_LISTS_PER_SQRT_N = 2      # IVF cells: 2 * sqrt(n)
IVF_NPROBE = 16               # cells searched per vector
PROGRESS_SLICE = 512          # texts per encode call (a few seconds on a 2-core CPU)
SLICE = 8192                  # texts read, embedded and searched at a time


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
    """For each row, the earlier rows whose cosine similarity is >= threshold (as a dict;
    `pair_arrays` gives the same as arrays)."""
    pairs: dict[int, list[tuple[int, float]]] = {}
    i, j, s = pair_arrays(vectors, threshold, exact_max)
    for a, b, sim in zip(i.tolist(), j.tolist(), s.tolist(), strict=True):
        pairs.setdefault(a, []).append((b, sim))
    return pairs


def pair_arrays(vectors: np.ndarray, threshold: float,
                exact_max: int = EXACT_MAX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j < i) of rows whose cosine similarity is >= threshold, as arrays
    (i, j, similarity) ordered by i.

    Vectors must be L2-normalised (inner product = cosine); they may be a memory-mapped
    file, read a slice at a time. Up to `exact_max` rows the search is exact (every
    pair); beyond, a faiss IVF index finds the pairs (bench/ measures its recall of
    planted near-duplicates) and their similarities are then computed exactly.
    """
    if len(vectors) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    # float32 dot products of equal unit vectors can land just below 1: the rule is
    # "at or above", so compare with a hair of slack.
    floor = float(threshold) - SIMILARITY_EPS
    i, j, s = (_exact_pairs if len(vectors) <= exact_max else _ivf_pairs)(vectors, floor)
    order = np.argsort(i, kind="stable")
    return i[order], j[order], s[order]


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
        sims[:, a:b][np.triu_indices(b - a)] = -np.inf  # a row's own and later columns
        # most rows have no pair: find the rows that do by their maximum, a fast
        # reduction, and look for the columns only in those
        rows = np.flatnonzero(sims.max(axis=1) >= floor)
        hit_rows, cols = np.nonzero(sims[rows] >= floor)
        out_i.append(rows[hit_rows] + a)
        out_j.append(cols)
        out_s.append(sims[rows[hit_rows], cols])
        release(vectors)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def _ivf_pairs(vectors: np.ndarray, floor: float) -> tuple[np.ndarray, ...]:
    """Range search on a faiss IVF index with 8-bit codes (a quarter of the memory of the
    float32 vectors: 384 MB at a million 384-wide vectors): each vector is compared with
    the vectors in its IVF_NPROBE nearest k-means cells only, `code_slack` below the floor
    (no pair in those cells is lost to the codes' rounding), and each pair found is then
    scored exactly in float32. Vectors go in and queries go out SLICE rows at a time."""
    n, dim = vectors.shape
    nlist = min(n, max(64, int(IVF_LISTS_PER_SQRT_N * np.sqrt(n))))  # k-means needs n >= cells
    # codes of the vectors themselves (not of their offsets from their cell's centre), over
    # each dimension's whole range: no value is clamped, so code_slack bounds the rounding
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT, False)
    sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
    index.train(gather(vectors, np.sort(sample)))
    low, high = np.full(dim, np.inf, np.float32), np.full(dim, -np.inf, np.float32)
    for a in range(0, n, SLICE):
        part = vectors[a:a + SLICE]
        low, high = np.minimum(low, part.min(axis=0)), np.maximum(high, part.max(axis=0))
        release(vectors)
    ranges = np.concatenate([low, high - low]).astype(np.float32)
    faiss.copy_array_to_vector(ranges, index.sq.trained)
    for a in range(0, n, SLICE):
        index.add(np.ascontiguousarray(vectors[a:a + SLICE]))
        release(vectors)
    slack = code_slack(high - low)
    index.nprobe = IVF_NPROBE
    out_i, out_j, out_s = [], [], []
    for a in range(0, n, SLICE):
        queries = np.ascontiguousarray(vectors[a:a + SLICE])
        lims, _, ids = index.range_search(queries, floor - slack)
        rows = np.repeat(np.arange(a, a + len(queries)), np.diff(lims).astype(np.int64))
        earlier = ids < rows
        rows, ids = rows[earlier], ids[earlier]
        sims = np.einsum("ij,ij->i", queries[rows - a], vectors[ids]) if len(ids) else np.zeros(0, np.float32)
        close = sims >= floor
        out_i.append(rows[close])
        out_j.append(ids[close])
        out_s.append(sims[close])
        release(vectors)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def code_slack(widths: np.ndarray) -> float:
    """How far an 8-bit code can move a cosine: faiss's QT_8bit code of a component in a
    range of width w is at most w/510 from it (255 steps, decoded at their middle), and a
    unit query's inner product moves by at most the distance between the vector and its
    code (Cauchy-Schwarz); 1% and 1e-6 more for float rounding."""
    return float(np.linalg.norm(widths.astype(np.float64) / 510)) * 1.01 + 1e-6


def gather(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`vectors[rows]` (rows sorted) as one array in memory, read SLICE rows of the matrix
    at a time: rows spread over a memory-mapped file would otherwise map all of its pages
    at once (the kernel maps the pages around each one read: a million vectors' training
    sample held the whole 1.5 GB file)."""
    parts = []
    for a in range(0, len(vectors), SLICE):
        lo, hi = np.searchsorted(rows, [a, a + SLICE])
        if hi > lo:
            parts.append(vectors[rows[lo:hi]])
            release(vectors)
    return np.ascontiguousarray(np.concatenate(parts) if parts else vectors[:0], dtype="float32")


def release(vectors: np.ndarray) -> None:
    """Drop a memory-mapped matrix's pages from this process's resident set (the kernel
    keeps them in its page cache): read through the map, a million vectors would otherwise
    count 1.5 GB against the build. Nothing for an array in memory."""
    mapped = getattr(vectors, "_mmap", None)
    if mapped is not None:
        mapped.madvise(mmap.MADV_DONTNEED)


def text_hash(text: str) -> int:
    """A text as a 64-bit number (blake2b), to find a text's row without holding the texts."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


class PoolTexts:
    """What dedup embeds, one text per row of its matrix: every prompt of the pool (keepers
    first), then the template prompts of rewrites (for the off-topic check) that are not
    among them. A template prompt is embedded once, as the candidate it also is (variant 0,
    which generate writes just before its rewrites). `rows` yields the texts as the
    candidates stream by; only 64-bit hashes stay behind."""

    def __init__(self) -> None:
        self.hashes = array("q")     # each row's text
        self.templates = array("q")  # each pool row's template prompt (0: not a rewrite)
        self.pool = 0                # rows that are candidates or keepers
        self._loose: dict[int, str] = {}  # template prompts not seen as the latest variant 0

    def rows(self, candidates: Iterable[Candidate], keepers: Iterable[Candidate] = ()) -> Iterator[str]:
        for c in keepers:
            self.hashes.append(text_hash(c.prompt))
            self.templates.append(0)
            yield c.prompt
        latest = 0
        for c in candidates:
            h = text_hash(c.prompt)
            self.hashes.append(h)
            if c.is_rewrite:
                t = text_hash(c.template_text)
                if t != latest:
                    self._loose.setdefault(t, c.template_text)
                self.templates.append(t)
            else:
                latest = h
                self.templates.append(0)
            yield c.prompt
        self.pool = len(self.hashes)
        loose = list(self._loose.items())
        seen = np.isin(np.array([h for h, _ in loose], dtype=np.int64), self.hash_array())
        for (h, text), known in zip(loose, seen.tolist(), strict=True):
            if not known:
                self.hashes.append(h)
                yield text

    def hash_array(self) -> np.ndarray:
        return np.frombuffer(self.hashes, dtype=np.int64) if self.hashes else np.zeros(0, dtype=np.int64)

    def template_rows(self) -> np.ndarray:
        """Each pool row's template prompt's row (-1: not a rewrite)."""
        hashes, templates = self.hash_array(), np.frombuffer(self.templates, dtype=np.int64)
        order = np.argsort(hashes, kind="stable")
        rewrites = templates != 0
        rows = np.full(self.pool, -1, dtype=np.int64)
        # any row holding the text will do: equal texts have equal vectors
        rows[rewrites] = order[np.searchsorted(hashes[order], templates[rewrites])]
        return rows


@dataclass
class Outcomes:
    """Dedup's verdicts on the pool's rows, as arrays: `reason` 0 kept, 1 an off-topic
    rewrite, 2 a duplicate of row `other`; `similarity` to that row or, for an off-topic
    rewrite, to its template prompt. Keepers' rows are kept."""

    reason: np.ndarray
    other: np.ndarray
    similarity: np.ndarray

    def decision(self, i: int, candidate: Candidate, id_of: Callable[[int], str]) -> Decision:
        reason = int(self.reason[i])
        if reason == 0:
            return Decision(candidate=candidate, kept=True)
        similarity = round(float(self.similarity[i]), 4)
        if reason == 1:
            return Decision(candidate=candidate, kept=False, reason="off_topic_rewrite",
                            similarity=similarity)
        return Decision(candidate=candidate, kept=False, reason="duplicate",
                        duplicate_of=id_of(int(self.other[i])), similarity=similarity)


def dedup_rows(embedded: np.ndarray, pool: int, keepers: int, template_row: np.ndarray, cfg: DedupConfig,
               min_similarity: float | None) -> Outcomes:
    """The pool is rows 0..`pool` of `embedded` (keepers first); `template_row` is each
    pool row's template prompt's row (-1: not a rewrite). `min_similarity` None: no
    off-topic check."""
    vectors = embedded[:pool]
    pair_i, pair_j, pair_s = pair_arrays(vectors, cfg.threshold, cfg.exact_max)
    bounds = np.searchsorted(pair_i, np.arange(pool + 1)).tolist()
    reason = np.zeros(pool, dtype=np.int8)
    other = np.full(pool, -1, dtype=np.int64)
    similarity = np.zeros(pool, dtype=np.float64)
    kept = np.zeros(pool, dtype=bool)
    kept[:keepers] = True
    checked = min_similarity is not None
    for i in range(keepers, pool):
        if i % SLICE == 0:
            release(embedded)  # the on-topic check reads rows from the whole file
        t = int(template_row[i])
        if checked and t >= 0:
            on_topic = float(np.dot(embedded[i], embedded[t]))
            if on_topic < min_similarity:
                reason[i], similarity[i] = 1, on_topic
                continue
        # Compare only with kept candidates, so every dropped one points at a
        # prompt that is in the benchmark; ties go to the earliest keeper.
        lo, hi = bounds[i], bounds[i + 1]
        matches = [(j, s) for j, s in zip(pair_j[lo:hi].tolist(), pair_s[lo:hi].tolist(), strict=True)
                   if kept[j]] if hi > lo else []
        if matches:
            j, sim = max(matches, key=lambda m: (m[1], -m[0]))
            reason[i], other[i], similarity[i] = 2, j, min(sim, 1.0)
        else:
            kept[i] = True
    release(embedded)
    return Outcomes(reason, other, similarity)


def embed_to_file(texts: Iterable[str], embedder: Embedder, path: Path) -> np.ndarray:
    """Embed `texts` SLICE at a time into a float32 file at `path`, memory-mapped back."""
    rows, dim = 0, 384
    with path.open("wb") as out:
        for chunk in slices(texts, SLICE):
            vectors = np.ascontiguousarray(embedder.encode(chunk), dtype="float32")
            rows, dim = rows + len(vectors), vectors.shape[1]
            out.write(vectors.tobytes())
    if rows == 0:
        return np.zeros((0, dim), dtype="float32")
    return np.memmap(path, dtype="float32", mode="r", shape=(rows, dim))


def dedup_candidates(candidates: list[Candidate], cfg: DedupConfig, embedder: Embedder,
                     keepers: list[Candidate] = (), min_similarity: float | None = None) -> list[Decision]:
    """`keepers` are prompts already in the benchmark (carried over from a base snapshot):
    they come first, are always kept, and get no Decision of their own. `min_similarity`
    None: no off-topic check. In memory; `dedup_files` is the same over files."""
    pool = [*keepers, *candidates]
    texts = PoolTexts()
    embedded = embedder.encode(list(texts.rows(candidates, keepers)))
    outcomes = dedup_rows(embedded, texts.pool, len(keepers), texts.template_rows(), cfg, min_similarity)
    return [outcomes.decision(i, c, lambda j: pool[j].id) for i, c in enumerate(pool) if i >= len(keepers)]


def usable(path: Path) -> Iterator[Candidate]:
    """The candidates generate kept in one of its files, read a line at a time."""
    return (d.candidate for d in iter_jsonl(path, Decision) if d.kept)


def dedup_files(generated: list[tuple[Path, Path]], cfg: DedupConfig, embedder: Embedder,
                keepers: list[Candidate], min_similarity: float | None, vectors: Path) -> StageCounts:
    """`dedup_candidates` over generate's files without holding their candidates: each
    (generated file, dedup file) pair is read once to embed its usable prompts SLICE at a
    time into the float32 file `vectors` (memory-mapped for the search, removed at the
    end) and once more to write the decisions; in between only 64-bit hashes and the
    verdict arrays are held. Returns the decisions' counts."""
    texts = PoolTexts()
    try:
        candidates = itertools.chain.from_iterable(usable(src) for src, _ in generated)
        embedded = embed_to_file(texts.rows(candidates, keepers), embedder, vectors)
        outcomes = dedup_rows(embedded, texts.pool, len(keepers), texts.template_rows(), cfg, min_similarity)
        del embedded
    finally:
        vectors.unlink(missing_ok=True)
    # the ids duplicates point at, taken as the files are read again (a keeper comes first)
    wanted = set(np.unique(outcomes.other[outcomes.other >= 0]).tolist())
    ids = {i: c.id for i, c in enumerate(keepers) if i in wanted}
    tally: Counter = Counter()
    row = len(keepers)

    def decisions(src: Path) -> Iterator[Decision]:
        nonlocal row
        for c in usable(src):
            if row in wanted:
                ids[row] = c.id
            d = outcomes.decision(row, c, ids.__getitem__)
            tally[StageCounts.key(d)] += 1
            row += 1
            yield d

    for src, dst in generated:
        write_jsonl(dst, decisions(src))
    return StageCounts.of_tally(tally)
