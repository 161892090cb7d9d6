"""Exact and fuzzy de-duplication of documents: content hashes, then MinHash LSH (GPT-3 §2.2, Appendix A).

GPT-3 "fuzzily deduplicated documents within each dataset using Spark's MinHashLSH implementation with 10 hashes"
(Appendix A) and removed documents that overlap across datasets. `dedup` does both at once: every input, of every
source, goes through one index, so a document is dropped whether its twin came from the same file or another one.

For each document, in input order:

1. **Exact**: a 128-bit BLAKE2b hash of its text. A document whose text was seen before is removed.
2. **Near**: the document becomes a set of word n-grams (`ngram` consecutive words, lower-cased, words = runs of
   `\\w`; a document shorter than `ngram` words is one n-gram of all of them), and the set becomes a MinHash
   signature of `num_perm` values (`datasketch.MinHash`, computed by `workers` processes). The Jaccard similarity
   |A ∩ B| / |A ∪ B| of two documents' n-gram sets is estimated by the share of equal signature values.
   Candidates come from LSH banding: the signature is cut into `b` bands of `r` values, and two documents that
   agree on a whole band are candidates. A pair with Jaccard s becomes a candidate with probability
   1 − (1 − s^r)^b; `lsh_params` picks the largest r (fewest spurious candidates) with b·r ≤ num_perm that still
   makes a pair *at* the threshold a candidate with probability ≥ 0.99. Every candidate is then checked: the
   document is a near duplicate when its Jaccard similarity with a kept document is ≥ `threshold` — by default
   (`verify="exact"`) the exact Jaccard of the two sets of n-gram hashes, so that MinHash's estimation error
   (standard error √(s(1−s)/num_perm), 0.035 at s = 0.8 with 128 permutations) only decides which pairs are looked
   at, never which are removed; `verify="minhash"` uses the signature estimate instead and stores no n-gram sets.
3. The first document of each cluster (in input order) is kept; a removed document joins the cluster of the kept
   document it matched (the most similar one), and an exact copy of a removed document joins that same cluster.

Documents with no word at all (only punctuation or symbols) get only the exact check, and are counted.

With `unit="passage"` the unit is a passage instead of a document: each document is cut into passages of about
`passage_words` words at its own paragraph breaks (gptkit.data.passages: the cuts depend on the text, not on where
it sits, so two editions of a chapter are cut alike), every passage goes through steps 1-3 in input order, and a
document is written with the passages it keeps, joined by its own separators, or not at all when it keeps none.
So a chapter that a later book repeats (a complete volume after its parts, a letter quoted in two volumes, a
publisher's catalogue at the end of many books) is removed from the later book, the rest of which stays.

Memory is bounded by the number of documents, not by their text: texts stream from the inputs to the output, and
the index holds 16 bytes per band per kept document (sorted numpy runs, merged like a log-structured merge tree)
plus 24 bytes per document for the exact hashes. The kept documents' signatures and n-gram hash sets (4 bytes
per n-gram, about 2/3 of the text's size), needed only to check candidates, go to temporary files next to the
output (deleted at the end) and are read back with `pread`. Resident, the index is an order of magnitude smaller
than datasketch's own `MinHashLSH` with the same bands, which holds Python objects per document (measured in
docs/benchmarks.md); the tests check that both return the same candidates.

The output is deterministic: decisions are taken in input order in the main process, and signatures do not
depend on which process computes them, so any number of workers gives byte-identical output.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import heapq
import json
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import numpy as np
from datasketch import MinHash

from .passages import WORD, Span, join_kept, passage_spans
from .passes import FilterPass, PassOutput, batched
from .records import Record
from .shards import DataError
from .workers import default_workers, ordered_map, worker_pool

REPORT_FORMAT = "gptkit-dedup-report"
UNITS = ("document", "passage")
TOP_DOCUMENTS = 10  # documents listed in a passage run's report, most bytes removed first
_CHUNK_VALUES = 1 << 21  # n-gram hashes × permutations per MinHash.update_batch call: bounds its (chunk, num_perm)
# uint64 matrices to 16 MiB (16,384 n-grams a call at the default 128 permutations)
MAX_NUM_PERM = 1 << 13  # 32 KiB of signature per kept document, 64 times the default
BATCH_DOCS = 512  # documents per batch sent to a worker ...
BATCH_CHARS = 1 << 20  # ... or this many characters
_MUL = np.uint64(0x100000001B3)  # the multiplier of the n-gram chain (FNV-1's 64-bit prime)
_F1, _F2, _S33 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)
_U32 = np.uint64(32)


# ------------------------------------------------------------------------------------------ signatures
def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, element-wise on a uint64 array (its arithmetic wraps, which is the point)."""
    h = h ^ (h >> _S33)
    h = h * _F1
    h = h ^ (h >> _S33)
    h = h * _F2
    return h ^ (h >> _S33)


def ngram_hashes(text: str, ngram: int = 5) -> np.ndarray:
    """32-bit hashes of the document's word n-grams (uint32; empty when the text has no word).

    Words are lower-cased runs of `\\w`; each word is hashed with CRC-32 (the same value in every process and
    every run, unlike Python's salted `hash`), and n consecutive word hashes are combined with a multiply-add
    chain and MurmurHash3's finaliser. A text of fewer than `ngram` words is one n-gram of all of its words.
    """
    words = WORD.findall(text.lower())
    if not words:
        return np.empty(0, dtype=np.uint32)
    w = np.array([zlib.crc32(x.encode("utf-8")) for x in words], dtype=np.uint64)
    n = min(ngram, len(w))
    m = len(w) - n + 1
    h = np.full(m, n, dtype=np.uint64)  # the chain starts from the n-gram's length
    for k in range(n):
        h = h * _MUL + w[k:k + m]
    return (_fmix64(h) >> _U32).astype(np.uint32)


def batch_ngram_hashes(texts: list[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """`ngram_hashes` of many texts at once (numpy over the whole batch instead of per text): the concatenated
    uint32 hashes and offsets (len(texts) + 1,), text i's hashes being `hashes[offsets[i]:offsets[i + 1]]`.

    The chain of `ngram_hashes` is h = L·C^L + Σ_j w_j·C^(L−1−j) for an n-gram of L words (uint64, wrapping), so
    the sums G_L for every start position are built up for L = 1..ngram over the whole batch, and each text takes
    G_ngram at its full n-gram starts, or G_len at its first word when it is shorter than `ngram`.
    """
    words = [WORD.findall(t.lower()) for t in texts]
    counts = np.array([len(x) for x in words], dtype=np.int64)
    w = np.array([zlib.crc32(x.encode("utf-8")) for ws in words for x in ws], dtype=np.uint64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    n_per = np.minimum(counts, ngram)  # words per n-gram, per text
    m_per = np.where(counts > 0, counts - n_per + 1, 0)  # n-grams per text
    offsets = np.concatenate([[0], np.cumsum(m_per)])
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    g = w.copy()  # G_1
    for L in range(1, ngram + 1):
        if L > 1:
            g = g[:-1] * _MUL + w[L - 1:]  # G_L[p] = G_{L-1}[p]·C + w[p+L-1], for p < len(w) − L + 1
        sel = n_per == L  # the texts whose n-grams have L words
        if not sel.any():
            continue
        # positions: for each selected text, its m n-gram starts
        m = m_per[sel]
        pos = np.repeat(starts[:-1][sel] - np.cumsum(m) + m, m) + np.arange(int(m.sum()))
        dst = np.repeat(offsets[:-1][sel] - np.cumsum(m) + m, m) + np.arange(int(m.sum()))
        out[dst] = np.uint64(L * pow(int(_MUL), L, 1 << 64) % (1 << 64)) + g[pos]
    return (_fmix64(out) >> _U32).astype(np.uint32), offsets


def _identity(x: int) -> int:
    return x


class Signer:
    """MinHash signatures (datasketch, scheme "affine32": uint32 values) of n-gram hash sets, one reusable sketch."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        self.ngram = ngram
        self._chunk = max(1, _CHUNK_VALUES // num_perm)
        # The n-gram hashes are already uniform 32-bit values: datasketch only needs to permute them.
        self._mh = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity, scheme="affine32")

    def signature(self, h: np.ndarray) -> np.ndarray:
        """The (num_perm,) uint32 signature of a non-empty array of n-gram hashes (see `ngram_hashes`)."""
        self._mh.clear()
        for i in range(0, len(h), self._chunk):  # a long document in chunks: bounded memory
            self._mh.update_batch(h[i:i + self._chunk].tolist())
        return self._mh.hashvalues.astype(np.uint32, copy=True)


_SIGNER: Signer | None = None


def _content_hash(text: str) -> tuple[int, int]:
    d = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


Signed = tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray] | None]


def sign_batch(texts: list[str], num_perm: int, ngram: int, seed: int, with_sets: bool = True) -> Signed:
    """Content hashes (n, 2) uint64, signatures (n, num_perm) uint32, has-words flags (n,) and, with `with_sets`,
    each text's n-gram hash set (sorted unique uint32) of a batch of texts. Runs in a worker process (or in the
    caller with one worker)."""
    global _SIGNER
    if _SIGNER is None or (_SIGNER.ngram, len(_SIGNER._mh)) != (ngram, num_perm) or _SIGNER._mh.seed != seed:
        _SIGNER = Signer(num_perm, ngram, seed)
    content = np.empty((len(texts), 2), dtype=np.uint64)
    sigs = np.zeros((len(texts), num_perm), dtype=np.uint32)
    has = np.zeros(len(texts), dtype=bool)
    sets: list[np.ndarray] | None = [] if with_sets else None
    hashes, offsets = batch_ngram_hashes(texts, ngram)
    for i, t in enumerate(texts):
        content[i] = _content_hash(t)
        h = hashes[offsets[i]:offsets[i + 1]]
        if len(h):
            sigs[i], has[i] = _SIGNER.signature(h), True
        if sets is not None:
            sets.append(np.unique(h))
    return content, sigs, has, sets


def sign_passages(texts: list[str], passage_words: int, num_perm: int, ngram: int, seed: int,
                  with_sets: bool = True) -> tuple[list[list[Span]], Signed]:
    """Each text's passages (`gptkit.data.passages.passage_spans`) and `sign_batch` of all of them, in order."""
    spans = [passage_spans(t, passage_words) for t in texts]
    passages = [t[a:b] for t, sp in zip(texts, spans) for a, b in sp]
    return spans, sign_batch(passages, num_perm, ngram, seed, with_sets)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """MinHash's estimate of the Jaccard similarity: the share of equal signature values."""
    return float(np.count_nonzero(a == b)) / len(a)


def set_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique arrays (two n-gram hash sets)."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


# ------------------------------------------------------------------------------------------ LSH banding
def lsh_params(threshold: float, num_perm: int, target: float = 0.99) -> tuple[int, int]:
    """(bands b, rows r) with b·r ≤ num_perm: the largest r for which a pair of Jaccard similarity `threshold`
    becomes a candidate with probability 1 − (1 − t^r)^b ≥ `target` (module docstring)."""
    if not 0.0 < threshold <= 1.0:
        raise DataError(f"--threshold must be in (0, 1], got {threshold}")
    for r in range(num_perm, 0, -1):
        p = threshold ** r
        if p >= 1.0:
            return 1, r
        # the bands needed, fractional; infinite when t^r is below float resolution (0.8^r for r > ~3300)
        bands = math.log(1.0 - target) / math.log1p(-p) if p > 0.0 else math.inf
        if bands * r <= num_perm and max(1, math.ceil(bands)) * r <= num_perm:
            return max(1, math.ceil(bands)), r
    return num_perm, 1


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """Probability that LSH banding makes a pair of Jaccard similarity `s` a candidate: 1 − (1 − s^r)^b."""
    return 1.0 - (1.0 - s ** rows) ** bands


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: band i of each signature hashed with the band's index, so that equal values in
    different bands never collide."""
    n = len(sigs)
    v = sigs[:, :bands * rows].reshape(n, bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15),
                            (n, bands)).copy()
        for j in range(rows):
            h = (h ^ v[:, :, j]) * np.uint64(0x100000001B3)
        return _fmix64(h)


class SortedRuns:
    """A multimap uint64 key -> row of int64 values, in memory as sorted numpy runs (16+ bytes per entry instead
    of the ~100 of a Python dict entry). New entries arrive in batches, each batch becomes a sorted run, and runs
    of similar size are merged (a stable sort of two sorted runs is a linear-time merge), so there are
    O(log n) runs and every entry is merged O(log n) times."""

    def __init__(self, width: int):
        self.width = width
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.runs)

    def add(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Add entries: `keys` (n,) uint64 and their value rows `vals` (n, width) int64."""
        if len(keys) == 0:
            return
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], vals.reshape(len(keys), self.width)[order]))
        while len(self.runs) >= 2 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (k2, v2), (k1, v1) = self.runs.pop(), self.runs.pop()
            k, v = np.concatenate([k1, k2]), np.concatenate([v1, v2])
            order = np.argsort(k, kind="stable")
            self.runs.append((k[order], v[order]))

    def lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (query index, value row) with an equal key, as two arrays."""
        qi, vals = [], []
        order = np.argsort(queries)
        sq = queries[order]  # sorted queries: the binary searches walk each run in order, cache-friendly
        for keys, v in self.runs:
            lo = np.searchsorted(keys, sq, "left")
            found = keys[np.minimum(lo, len(keys) - 1)] == sq
            if not found.any():
                continue
            hit = np.nonzero(found)[0]  # most queries miss: count repeated keys for the hits only
            reps = np.searchsorted(keys, sq[hit], "right") - lo[hit]
            qi.append(np.repeat(order[hit], reps))
            # positions lo[h], lo[h]+1, ..., lo[h]+reps[h]-1 for every hit h
            starts = np.repeat(lo[hit] - np.cumsum(reps) + reps, reps)
            vals.append(v[starts + np.arange(int(reps.sum()))])
        if not qi:
            return np.empty(0, dtype=np.int64), np.empty((0, self.width), dtype=np.int64)
        return np.concatenate(qi), np.concatenate(vals)


class _KeptStore:
    """What candidate checks need of the kept documents, in temporary files deleted on close: row k (the k-th kept
    document with words) = its signature, its document index, and where its n-gram hash set is in the sets file."""

    def __init__(self, num_perm: int, where: Path, with_sets: bool):
        self.num_perm = num_perm
        self.row_bytes = 4 * num_perm + 24
        self._rows = tempfile.TemporaryFile(dir=where, prefix=".gptkit-dedup-", buffering=0)
        self._sets = tempfile.TemporaryFile(dir=where, prefix=".gptkit-dedup-", buffering=0) if with_sets else None
        self.rows = 0
        self.set_bytes = 0

    def append(self, sigs: np.ndarray, doc_ids: np.ndarray, sets: list[np.ndarray] | None) -> None:
        if len(sigs) == 0:
            return
        meta = np.zeros((len(sigs), 3), dtype="<i8")
        meta[:, 0] = doc_ids
        if sets is not None and self._sets is not None:
            lens = np.array([len(x) for x in sets], dtype=np.int64)
            meta[:, 1] = self.set_bytes // 4 + np.cumsum(lens) - lens
            meta[:, 2] = lens
            blob = np.concatenate(sets).astype("<u4").tobytes()
            self._sets.write(blob)
            self.set_bytes += len(blob)
        block = np.empty((len(sigs), self.row_bytes), dtype=np.uint8)
        block[:, :4 * self.num_perm] = np.ascontiguousarray(sigs, dtype="<u4").view(np.uint8)
        block[:, 4 * self.num_perm:] = meta.view(np.uint8)
        self._rows.write(block.tobytes())
        self.rows += len(sigs)

    def get(self, row: int) -> tuple[np.ndarray, int, np.ndarray | None]:
        """(signature, document index, n-gram hash set or None) of kept row `row`."""
        raw = os.pread(self._rows.fileno(), self.row_bytes, row * self.row_bytes)
        sig = np.frombuffer(raw, dtype="<u4", count=self.num_perm)
        doc, start, n = np.frombuffer(raw, dtype="<i8", offset=4 * self.num_perm).tolist()
        ngrams = None
        if self._sets is not None:
            ngrams = np.frombuffer(os.pread(self._sets.fileno(), 4 * n, 4 * start), dtype="<u4")
        return sig, doc, ngrams

    def close(self) -> None:
        self._rows.close()
        if self._sets is not None:
            self._sets.close()


# ------------------------------------------------------------------------------------------ the index
Decision = tuple[str, int, float]  # ("keep" | "exact" | "near", kept document it duplicates (or itself), Jaccard)


class DedupIndex:
    """The documents kept so far, and the decision for each new one (module docstring, steps 1-3).

    `decide` takes a batch of signed documents in input order and returns one decision per document, updating the
    index as it goes, so a document can match one kept earlier in the same batch.
    """

    def __init__(self, threshold: float, num_perm: int, verify: str, tmpdir: Path):
        self.threshold = threshold
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.with_sets = verify == "exact"
        self.exact = SortedRuns(2)  # content hash[0] -> (document its cluster keeps, content hash[1] as int64)
        self.near = SortedRuns(1)  # band key -> kept-store row
        self.store = _KeptStore(num_perm, tmpdir, self.with_sets)
        self.documents = 0

    def decide(self, content: np.ndarray, sigs: np.ndarray, has: np.ndarray,
               sets: list[np.ndarray] | None) -> list[Decision]:
        """Decisions for the next documents, given `sign_batch`'s output for them (`sets` may be None only with
        verify="minhash")."""
        base, b = self.documents, self.bands
        keys = band_keys(sigs, b, self.rows)
        check = content[:, 1].view(np.int64)
        # matches in earlier batches, looked up for the whole batch at once
        prior_exact: dict[int, int] = {}
        for i, (kept, c) in zip(*(a.tolist() for a in self.exact.lookup(content[:, 0]))):
            if c == check[i]:  # the other 64 bits of the content hash agree too
                prior_exact.setdefault(i, kept)
        prior_near: dict[int, set[int]] = collections.defaultdict(set)
        nq, nv = self.near.lookup(keys.ravel())
        for q, row in zip((nq // b).tolist(), nv[:, 0].tolist()):
            prior_near[q].add(row)
        # documents of this batch that share a band with an earlier one of the batch (sorting the batch's keys;
        # most keys are unique); whether that earlier one was kept is known only in the loop below
        flat = keys.ravel()
        order = np.argsort(flat, kind="stable")
        sk = flat[order]
        same = np.flatnonzero(sk[1:] == sk[:-1])
        earlier: dict[int, set[int]] = collections.defaultdict(set)
        for start in same[np.r_[True, np.diff(same) > 1]] if len(same) else ():  # each run of equal keys
            end = start + 1
            while end < len(sk) and sk[end] == sk[start]:
                end += 1
            docs = sorted({int(x) // b for x in order[start:end]})
            for k, later in enumerate(docs):
                earlier[later].update(docs[:k])
        # this batch's own kept documents, until they join the sorted runs at the end of the batch
        batch_exact: dict[tuple[int, int], int] = {}
        local_row: dict[int, int] = {}  # batch index of a kept document -> its kept-store row
        batch_rows: dict[int, tuple] = {}
        new_exact: list[tuple[int, int, int]] = []
        kept_local: list[int] = []
        out: list[Decision] = []
        for i in range(len(sigs)):
            doc = base + i
            ch = (int(content[i, 0]), int(content[i, 1]))
            kept = prior_exact.get(i, batch_exact.get(ch))
            if kept is not None:
                out.append(("exact", kept, 1.0))
                continue
            match, best = None, -1.0
            if has[i]:
                cands = set(prior_near.get(i, ()))
                cands.update(local_row[j] for j in earlier.get(i, ()) if j in local_row)
                for row in sorted(cands):
                    sig, kept_doc, kept_set = batch_rows[row] if row in batch_rows else self.store.get(row)
                    j = set_jaccard(sets[i], kept_set) if self.with_sets else estimated_jaccard(sigs[i], sig)
                    if j >= self.threshold and j > best:
                        match, best = kept_doc, j
            # an exact copy of this document, later, joins the same cluster
            cluster = doc if match is None else match
            batch_exact[ch] = cluster
            new_exact.append((ch[0], cluster, ch[1]))
            if match is not None:
                out.append(("near", match, best))
                continue
            out.append(("keep", doc, 1.0))
            if has[i]:
                row = self.store.rows + len(kept_local)
                kept_local.append(i)
                local_row[i] = row
                batch_rows[row] = (sigs[i], doc, sets[i] if self.with_sets else None)
        if kept_local:
            idx = np.array(kept_local)
            first = self.store.rows
            self.store.append(sigs[idx], base + idx, [sets[i] for i in kept_local] if self.with_sets else None)
            self.near.add(keys[idx].ravel(), np.repeat(np.arange(first, first + len(idx), dtype=np.int64), b))
        if new_exact:
            arr = np.array(new_exact, dtype=np.uint64)
            self.exact.add(arr[:, 0], arr[:, 1:].view(np.int64))
        self.documents += len(sigs)
        return out

    def close(self) -> None:
        """Delete the temporary files."""
        self.store.close()


# ------------------------------------------------------------------------------------------ the pass
def _check_parameters(threshold: float, num_perm: int, ngram: int, verify: str, unit: str,
                      passage_words: int) -> None:
    if num_perm < 2:
        raise DataError(f"--num-perm must be at least 2, got {num_perm}")
    if num_perm > MAX_NUM_PERM:
        raise DataError(f"--num-perm must be at most {MAX_NUM_PERM:,} (each kept document stores 4 bytes per "
                        f"permutation; 128 is usual), got {num_perm:,}")
    if ngram < 1:
        raise DataError(f"--ngram must be at least 1, got {ngram}")
    if verify not in ("exact", "minhash"):
        raise DataError(f"--verify must be exact or minhash, got {verify!r}")
    if unit not in UNITS:
        raise DataError(f"--unit must be document or passage, got {unit!r}")
    if passage_words < 2:
        raise DataError(f"--passage-words must be at least 2, got {passage_words}")
    lsh_params(threshold, num_perm)  # checks the threshold


class _Tally:
    """What the report counts: decisions overall and per input file, and the clusters of removed documents."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.by_file: dict[str, collections.Counter] = {}
        self.clusters: collections.Counter = collections.Counter()  # kept document -> documents removed into it

    def add(self, path: str, kind: str, dup_of: int) -> None:
        fs = self.by_file.get(path)
        if fs is None:
            fs = self.by_file[path] = collections.Counter()
        fs["documents"] += 1
        fs[kind] += 1
        self.counts[kind] += 1
        if kind != "keep":
            self.clusters[dup_of] += 1

    def fields(self, documents: int) -> dict:
        assert documents == sum(self.counts[k] for k in ("keep", "exact", "near"))  # every document accounted for
        sizes = collections.Counter(1 + c for c in self.clusters.values())
        return {
            "documents_in": documents,
            "kept": self.counts["keep"],
            "exact_duplicates_removed": self.counts["exact"],
            "near_duplicates_removed": self.counts["near"],
            "clusters": len(self.clusters),  # clusters of two or more documents (one kept, the rest removed)
            "largest_cluster": max(sizes) if sizes else 1,
            "cluster_sizes": {str(k): sizes[k] for k in sorted(sizes)},
            "documents_without_words": self.counts["no_words"],
            "by_file": {p: {"documents": c["documents"], "kept": c["keep"], "exact": c["exact"], "near": c["near"]}
                        for p, c in self.by_file.items()},
        }


Results = Iterator[tuple[list[Record], Any]]  # (a batch's records, what the signing function returned)


def _dedup_documents(results: Results, index: DedupIndex, w: PassOutput, text_field: str) -> dict:
    """Decide every document (`unit="document"`); the report's fields."""
    tally = _Tally()
    for recs, (content, sigs, has, sets) in results:
        base = index.documents
        tally.counts["no_words"] += int(len(has) - has.sum())
        for i, (rec, (kind, dup_of, jac)) in enumerate(zip(recs, index.decide(content, sigs, has, sets))):
            tally.add(rec.path, kind, dup_of)
            if kind == "keep":
                w.keep(rec.to_json(text_field))
            else:
                w.drop(_removed_line({"document": base + i}, rec, kind, dup_of, jac) if w.writes_other else None)
        w.advance()
    return tally.fields(index.documents)


class _PassageTally:
    """What a passage run's report counts: passages and text bytes in and removed, documents changed and emptied,
    per input file, and the documents that lost the most bytes."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.by_file: dict[str, collections.Counter] = {}
        self.top: list[tuple[int, int, dict]] = []  # a min-heap of (bytes removed, -document, its entry)
        self.first_passage = np.zeros(1024, dtype=np.int64)  # document -> index of its first passage (8 B each)
        self.started = 0  # documents in first_passage

    def start_documents(self, base: int, counts: list[int]) -> None:
        """Record where the next documents' passages start: `base` for the first, then `counts` passages each."""
        d, need = self.started, self.started + len(counts)
        if need > len(self.first_passage):
            self.first_passage = np.resize(self.first_passage, max(need, 2 * len(self.first_passage)))
        self.first_passage[d:need] = base + np.cumsum([0, *counts[:-1]], dtype=np.int64)
        self.started = need

    def document_of(self, passage: int) -> tuple[int, int]:
        """(document, passage number within it) of a passage's index in the stream of all passages."""
        d = int(np.searchsorted(self.first_passage[:self.started], passage, side="right")) - 1
        return d, passage - int(self.first_passage[d])

    def add(self, rec: Record, doc: int, kinds: list[str], bytes_in: int, bytes_out: int) -> None:
        removed = sum(k != "keep" for k in kinds)
        row = {"documents": 1, "passages": len(kinds), "passages_removed": removed,
               "exact": kinds.count("exact"), "near": kinds.count("near"), "text_bytes": bytes_in,
               "text_bytes_removed": bytes_in - bytes_out,
               "changed": int(0 < removed < len(kinds)), "emptied": int(removed > 0 and removed == len(kinds))}
        self.counts.update(row)
        self.by_file.setdefault(rec.path, collections.Counter()).update(row)
        if bytes_in > bytes_out:
            entry = {"document": doc, "path": rec.path, "line": rec.line,
                     **({"source": rec.fields["source"]} if rec.fields and "source" in rec.fields else {}),
                     "text_bytes": bytes_in, "text_bytes_removed": bytes_in - bytes_out,
                     "passages": len(kinds), "passages_removed": removed}
            heapq.heappush(self.top, (bytes_in - bytes_out, -doc, entry))
            if len(self.top) > TOP_DOCUMENTS:
                heapq.heappop(self.top)

    def fields(self, passages: int) -> dict:
        c = self.counts
        assert passages == c["passages"]  # every passage accounted for
        return {
            "documents_in": c["documents"],
            "kept": c["documents"] - c["emptied"],
            "documents_changed": c["changed"],
            "documents_emptied": c["emptied"],
            "passages_in": c["passages"],
            "passages_kept": c["passages"] - c["passages_removed"],
            "exact_passages_removed": c["exact"],
            "near_passages_removed": c["near"],
            "passages_without_words": c["no_words"],
            "text_bytes_in": c["text_bytes"],
            "text_bytes_removed": c["text_bytes_removed"],
            "removed_fraction": c["text_bytes_removed"] / c["text_bytes"] if c["text_bytes"] else 0.0,
            "top_documents": [e for _, _, e in sorted(self.top, key=lambda t: (-t[0], -t[1]))],
            "by_file": {p: {k: f[k] for k in ("documents", "changed", "emptied", "passages", "passages_removed",
                                              "text_bytes_removed")} for p, f in self.by_file.items()},
        }


def _dedup_passages(results: Results, index: DedupIndex, w: PassOutput, text_field: str) -> dict:
    """Decide every passage of every document (`unit="passage"`) and write each document rewritten from its kept
    passages (unchanged when all are kept, dropped when none is); the report's fields."""
    tally = _PassageTally()
    for recs, (spans, (content, sigs, has, sets)) in results:
        base = index.documents
        tally.counts["no_words"] += int(len(has) - has.sum())
        decisions = index.decide(content, sigs, has, sets)
        tally.start_documents(base, [len(sp) for sp in spans])
        k = 0
        for rec, sp in zip(recs, spans):
            doc, mine = tally.counts["documents"], decisions[k:k + len(sp)]
            keep = [kind == "keep" for kind, _, _ in mine]
            changed = not all(keep)
            text = join_kept(rec.text, sp, keep) if changed else rec.text
            if w.writes_other:
                for j, (kind, dup, jac) in enumerate(mine):
                    if kind != "keep":
                        dup_doc, dup_passage = tally.document_of(dup)
                        where = {"document": doc, "passage": j, "start": sp[j][0], "end": sp[j][1]}
                        w.other(_removed_line(where, rec, kind, dup_doc, jac, {"duplicate_of_passage": dup_passage}))
            bytes_in = len(rec.text.encode("utf-8"))
            bytes_out = len(text.encode("utf-8")) if changed else bytes_in
            tally.add(rec, doc, [kind for kind, _, _ in mine], bytes_in, bytes_out)
            if not changed:
                w.keep(rec.to_json(text_field))
            elif text:
                fields = {**rec.fields, text_field: text} if rec.fields is not None else None
                w.keep(Record(text, fields, rec.path, rec.line).to_json(text_field))
            else:
                w.drop()
            k += len(sp)
        w.advance()
    return tally.fields(index.documents)


def dedup(inputs: list[str | os.PathLike], out: str | os.PathLike, threshold: float = 0.8, num_perm: int = 128,
          ngram: int = 5, text_field: str = "text", workers: int | None = None, seed: int = 1, verify: str = "exact",
          report: str | os.PathLike | None = None, removed: str | os.PathLike | None = None,
          progress: bool | None = None, warn: Callable[[str], None] | None = None, unit: str = "document",
          passage_words: int = 200) -> dict:
    """Remove exact and near duplicates from `inputs`, writing the kept documents to `out` (JSONL), and return
    the report (also written to `report`, default `OUT.report.json`).

    Args:
        inputs: text files, directories, JSONL files and `.gz` of these (gptkit.data.records); all are deduplicated
            together, within and across inputs.
        out: JSONL of the kept documents in input order, each the input JSON object unchanged (a text file becomes
            `{text_field: text, "source": path}`) except, with `unit="passage"`, for its text; gzip-compressed when
            the name ends in `.gz`.
        threshold: Jaccard similarity of word n-gram sets at or above which a document is a near duplicate.
        num_perm: MinHash permutations (signature length); the estimate's standard error is √(s(1−s)/num_perm).
        verify: "exact" checks each LSH candidate with the exact Jaccard of the n-gram hash sets (kept documents'
            sets go to a temporary file); "minhash" with the signature estimate (no sets stored, noisier near the
            threshold).
        ngram: words per n-gram.
        workers: processes computing signatures (default: 1 below 8 MB of input, else the usable cores, at most
            8); the output does not depend on it.
        removed: optional JSONL with one line per removed document: its index in the input stream, path, line,
            kind ("exact" or "near"), the index of the kept document it duplicates, and the Jaccard similarity
            (exact or estimated, as `verify` says). With `unit="passage"`, one line per removed passage, which also
            gives its number in its document, its character span, and the number of the kept passage it
            duplicates within that kept document (`duplicate_of_passage`).
        unit: "document", or "passage": every document is cut into passages of about `passage_words` words at its
            paragraph breaks (gptkit.data.passages), each passage is the unit that is kept or removed, exactly as
            documents are (so a passage may duplicate one kept earlier in the same document), and a document is
            written with its kept passages only, or not at all when none is kept.
    """
    _check_parameters(threshold, num_perm, ngram, verify, unit, passage_words)
    run = FilterPass(inputs, out, text_field=text_field, report=report, others={"--removed": removed}, warn=warn)
    if workers is not None and int(workers) < 1:
        raise DataError(f"--threads must be at least 1, got {workers}")
    workers = default_workers(run.reader.total_bytes) if workers is None else int(workers)
    params = {"num_perm": num_perm, "ngram": ngram, "seed": seed, "with_sets": verify == "exact"}
    sign, decide_all = ((functools.partial(sign_batch, **params), _dedup_documents) if unit == "document" else
                        (functools.partial(sign_passages, passage_words=passage_words, **params), _dedup_passages))
    index = DedupIndex(threshold, num_perm, verify, run.out.parent)
    try:
        with run.writing(removed, progress, "dedup") as w:
            if workers > 1:
                sign_batch([], num_perm, ngram, seed)  # import datasketch once, here: forked workers inherit it
            with worker_pool(workers, w.bar) as pool:
                jobs = ((b, ([r.text for r in b],)) for b in batched(run.reader.records(), BATCH_DOCS, BATCH_CHARS))
                fields = decide_all(ordered_map(sign, jobs, pool, workers), index, w, text_field)
    finally:
        index.close()
    b, r = index.bands, index.rows
    parameters = {"unit": unit, **({"passage_words": passage_words} if unit == "passage" else {}),
                  "threshold": threshold, "num_perm": num_perm, "ngram": ngram, "seed": seed, "verify": verify,
                  "bands": b, "rows": r, "text_field": text_field,
                  "candidate_probability_at_threshold": round(candidate_probability(threshold, b, r), 4)}
    input_bytes = sum(s.bytes for s in run.reader.stats)
    return run.finish(run.report(REPORT_FORMAT, {**fields, "parameters": parameters},
                                 {"workers": workers, "input_bytes": input_bytes}))


def _removed_line(where: dict, rec: Record, kind: str, dup_of: int, jaccard: float, more: dict | None = None) -> str:
    return json.dumps({**where, "path": rec.path, "line": rec.line, "kind": kind, "duplicate_of": dup_of,
                       **(more or {}), "jaccard": round(jaccard, 4)})
