"""Quality filtering the GPT-3 way: a logistic-regression classifier on hashed n-gram features (GPT-3 Appendix A).

GPT-3 trained "a logistic regression classifier with features from Spark's standard tokenizer and HashingTF",
high-quality reference text (WebText, Wikipedia, a web books corpus) as positives and unfiltered Common Crawl as
negatives, scored every Common Crawl document, and kept a document when

    np.random.pareto(α) > 1 − document_score,     α = 9,

"to take mostly high quality documents while also taking some documents that were out of distribution". Here:

- `train_quality`: scikit-learn `HashingVectorizer` (lower-cased word n-grams, 1..`ngram_max`, hashed into
  `n_features` columns, L2-normalised, no alternating signs) and `LogisticRegression` (balanced class weights, so
  a source's size does not move the scores), fit on all but a seeded, stratified `heldout` share of the documents;
  the accuracy on that held-out share is reported and stored with the model.
- `filter_quality`: scores documents in a stream and keeps them by the Pareto rule (α configurable, seeded) or by
  a plain `threshold`; writes the kept documents (JSONL, input fields preserved), a JSON report with the kept
  fraction next to the fraction the rule should keep, and a histogram of the scores (PNG).

numpy's `pareto(α)` draws a Lomax variable X with P(X > x) = (1 + x)^−α for x ≥ 0, so a document of score s is
kept with probability (2 − s)^−α (1 when s = 1, 2^−9 ≈ 0.002 when s = 0 for α = 9), and the expected kept
fraction of a corpus is the mean of (2 − s_i)^−α over its scores (`keep_probability`). The report gives both.

The model file is safetensors, never a pickle: the nonzero weights (indices, values), the intercept and, in the
file's metadata, the vectorizer's parameters and the training record; `QualityModel.load` rebuilds the
vectorizer and a `LogisticRegression` from them, so a model file cannot run code.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..io import atomic_path, parse_json
from .passes import FilterPass, batched, output_path, sibling_path
from .records import Record, RecordReader, text_file_fields
from .shards import DataError

MODEL_FORMAT = "gptkit-quality-classifier"
MODEL_VERSION = 1
REPORT_FORMAT = "gptkit-quality-report"
MAX_FEATURES = 1 << 26  # 512 MiB of float64 coefficients (plus sklearn's working copies); far more than needed
BATCH = 2048  # documents scored at a time
HIST_BINS = 20


def keep_probability(scores: np.ndarray, alpha: float) -> np.ndarray:
    """P(np.random.pareto(alpha) > 1 − s) = (2 − s)^−alpha for scores s in [0, 1] (module docstring)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    return (2.0 - s) ** -alpha


def _vectorizer(params: dict):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=params["n_features"], ngram_range=tuple(params["ngram_range"]),
                             lowercase=params["lowercase"], token_pattern=params["token_pattern"],
                             alternate_sign=params["alternate_sign"], norm=params["norm"], dtype=np.float64)


@dataclass
class QualityModel:
    """A trained quality classifier: hashed n-gram features -> P(reference-like | document)."""

    coef: np.ndarray  # (n_features,) float64
    intercept: float
    vectorizer_params: dict
    info: dict = field(default_factory=dict)  # the training record: sources, counts, held-out accuracy

    def __post_init__(self) -> None:
        from sklearn.linear_model import LogisticRegression

        self._vec = _vectorizer(self.vectorizer_params)
        self._lr = LogisticRegression()  # rebuilt from the stored weights, not unpickled
        self._lr.classes_ = np.array([0, 1])
        self._lr.coef_ = self.coef.reshape(1, -1)
        self._lr.intercept_ = np.array([self.intercept])
        self._lr.n_features_in_ = self.coef.shape[0]

    def score(self, texts: list[str]) -> np.ndarray:
        """P(positive) of each text, in [0, 1]."""
        if not texts:
            return np.empty(0)
        return self._lr.predict_proba(self._vec.transform(texts))[:, 1]

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as one safetensors file (atomically: a temporary sibling, then os.replace)."""

        path = Path(path)
        nz = np.flatnonzero(self.coef)
        meta = {"format": MODEL_FORMAT, "format_version": str(MODEL_VERSION),
                "vectorizer": json.dumps(self.vectorizer_params), "info": json.dumps(self.info)}
        with atomic_path(path) as tmp:
            save_file({"coef_index": nz.astype(np.int64), "coef_value": self.coef[nz].astype(np.float64),
                       "intercept": np.array([self.intercept], dtype=np.float64)}, str(tmp), metadata=meta)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600 files; a model is shared like any output

    @classmethod
    def load(cls, path: str | os.PathLike) -> QualityModel:
        """Read a model written by `save`; anything else is a one-line DataError."""

        path = Path(path)
        if not path.is_file():
            raise DataError(f"--model {path}: no such file (train one with `gptkit data quality train`)")
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle)
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"--model {path}: not a gptkit quality model ({e})") from None
        if meta.get("format") != MODEL_FORMAT:
            raise DataError(f"--model {path}: not a gptkit quality model (format {meta.get('format')!r})")
        if meta.get("format_version") != str(MODEL_VERSION):  # safetensors metadata are strings
            raise DataError(f"--model {path}: model format version {meta.get('format_version')}, this gptkit "
                            f"reads version {MODEL_VERSION}")
        try:
            params = parse_json(meta["vectorizer"])
            problem = _vectorizer_problem(params)
            if problem is None:
                index, values = tensors["coef_index"], tensors["coef_value"]
                problem = _weights_problem(index, values, tensors["intercept"], params["n_features"])
            if problem is not None:
                raise DataError(f"--model {path}: corrupt quality model ({problem})")
            coef = np.zeros(params["n_features"], dtype=np.float64)
            coef[index] = values
            return cls(coef, float(tensors["intercept"][0]), params, parse_json(meta.get("info", "{}")))
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise DataError(f"--model {path}: corrupt quality model ({type(e).__name__}: {e})") from None


def _vectorizer_problem(params) -> str | None:
    """What is wrong with a model file's vectorizer parameters (None when nothing is): scikit-learn would only
    find it when the first batch is scored, with its own exception."""
    if not isinstance(params, dict):
        return "the vectorizer metadata is not a JSON object"
    n, ngrams, pattern = params.get("n_features"), params.get("ngram_range"), params.get("token_pattern")
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_FEATURES:
        return f"vectorizer n_features {n!r} is not a whole number in [2, 2**{MAX_FEATURES.bit_length() - 1}]"
    if (not isinstance(ngrams, list) or len(ngrams) != 2 or any(isinstance(k, bool) or not isinstance(k, int)
                                                                 for k in ngrams) or not 1 <= ngrams[0] <= ngrams[1]):
        return f"vectorizer ngram_range {ngrams!r} is not [min, max] with 1 <= min <= max"
    if not isinstance(pattern, str):
        return f"vectorizer token_pattern {pattern!r} is not a string"
    try:
        if re.compile(pattern).groups > 1:
            return f"vectorizer token_pattern {pattern!r} has more than one capturing group"
    except re.error as e:
        return f"vectorizer token_pattern {pattern!r} is not a regular expression ({e})"
    for key in ("lowercase", "alternate_sign"):
        if not isinstance(params.get(key), bool):
            return f"vectorizer {key} {params.get(key)!r} is not true or false"
    if params.get("norm") not in ("l1", "l2", None):
        return f"vectorizer norm {params.get('norm')!r} is not \"l1\", \"l2\" or null"
    return None


def _weights_problem(index: np.ndarray, values: np.ndarray, intercept: np.ndarray, n_features: int) -> str | None:
    """What is wrong with a model file's weights (None when nothing is): indices outside the features (a negative
    one would silently wrap around), or a weight or intercept that is not a finite number (every score NaN)."""
    if index.ndim != 1 or index.dtype.kind not in "iu" or values.shape != index.shape or intercept.shape != (1,):
        return (f"weights of shapes coef_index {list(index.shape)} ({index.dtype}), coef_value {list(values.shape)}, "
                f"intercept {list(intercept.shape)}; expected two equal 1-D arrays (integer indices) and one value")
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= n_features):
        return f"weight indices from {int(index.min())} to {int(index.max())}, outside [0, {n_features})"
    if values.dtype.kind != "f" or intercept.dtype.kind != "f":
        return f"weights of type {values.dtype} and intercept of type {intercept.dtype}; expected floats"
    if not (np.isfinite(values).all() and np.isfinite(intercept).all()):
        return "the intercept or a weight is NaN or infinite"
    return None


# ------------------------------------------------------------------------------------------ train
def _read_features(paths: list[str], text_field: str, vec, max_docs: int | None):
    """Hashed features of every document of `paths` (a sparse matrix; the texts are not kept), the reader (for
    its bad-input counts) and the documents per file."""
    import scipy.sparse as sp

    reader = RecordReader(paths, text_field=text_field)
    blocks, texts, n = [], [], 0
    for rec in reader.records():
        texts.append(rec.text)
        n += 1
        if len(texts) >= BATCH:
            blocks.append(vec.transform(texts))
            texts = []
        if max_docs is not None and n >= max_docs:
            break
    if texts:
        blocks.append(vec.transform(texts))
    X = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, vec.n_features))
    return X, reader


def _split(n: int, heldout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    k = int(round(n * heldout))
    if heldout > 0 and n >= 2:
        k = min(max(k, 1), n - 1)  # both parts non-empty
    return np.sort(perm[k:]), np.sort(perm[:k])


def train_quality(positive: list[str], negative: list[str], out: str | os.PathLike | None = None,
                  text_field: str = "text", n_features: int = 1 << 20, ngram_max: int = 2, heldout: float = 0.1,
                  C: float = 1.0, seed: int = 0, max_docs: int | None = None) -> tuple[QualityModel, dict]:
    """Train the classifier on documents of `positive` (label 1) and `negative` (label 0) inputs and save it to
    `out` (when given). Returns the model and its training record (also stored in the model file): documents per
    class, bad input per class, held-out accuracy (overall and per class), ROC AUC, and the parameters.

    `max_docs` caps the documents read from each class (the first ones, in input order).
    """
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    t0 = time.perf_counter()
    if not positive or not negative:
        raise DataError("quality training needs --positive and --negative inputs")
    if not 0.0 <= heldout < 1.0:
        raise DataError(f"--heldout must be in [0, 1), got {heldout}")
    if not math.isfinite(C) or not C > 0:
        raise DataError(f"--C must be a finite number > 0, got {C}")
    if not 2 <= n_features <= MAX_FEATURES:
        raise DataError(f"--n-features must be in [2, 2**{MAX_FEATURES.bit_length() - 1}], got {n_features} (the "
                        f"model holds one float64 per feature)")
    if ngram_max < 1:
        raise DataError(f"--ngram-max must be >= 1, got {ngram_max}")
    if max_docs is not None and max_docs < 1:
        raise DataError(f"--max-docs must be a positive whole number, got {max_docs}")
    if out is not None:
        from .outputs import check_output_file

        check_output_file(out, "--out", [*positive, *negative], DataError)
    params = {"n_features": int(n_features), "ngram_range": [1, int(ngram_max)], "lowercase": True,
              "token_pattern": r"(?u)\b\w\w+\b", "alternate_sign": False, "norm": "l2"}
    vec = _vectorizer(params)
    Xp, rp = _read_features(positive, text_field, vec, max_docs)
    Xn, rn = _read_features(negative, text_field, vec, max_docs)
    for name, X, paths in (("positive", Xp, positive), ("negative", Xn, negative)):
        if X.shape[0] < 2:
            raise DataError(f"--{name}: {X.shape[0]} document(s) in {', '.join(map(str, paths))}; need at least 2")
    rng = np.random.default_rng(seed)
    (ptr, pte), (ntr, nte) = _split(Xp.shape[0], heldout, rng), _split(Xn.shape[0], heldout, rng)
    X = sp.vstack([Xp[ptr], Xn[ntr]]).tocsr()
    y = np.concatenate([np.ones(len(ptr), dtype=np.int64), np.zeros(len(ntr), dtype=np.int64)])
    lr = LogisticRegression(C=C, class_weight="balanced", max_iter=1000)
    lr.fit(X, y)
    model = QualityModel(lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), params)

    held = {}
    if len(pte) and len(nte):
        sp_, sn_ = (lr.predict_proba(Xp[pte])[:, 1], lr.predict_proba(Xn[nte])[:, 1])
        acc_p, acc_n = float(np.mean(sp_ >= 0.5)), float(np.mean(sn_ < 0.5))
        held = {"documents": int(len(pte) + len(nte)), "positive": int(len(pte)), "negative": int(len(nte)),
                "accuracy": (acc_p * len(pte) + acc_n * len(nte)) / (len(pte) + len(nte)),
                "balanced_accuracy": (acc_p + acc_n) / 2, "accuracy_positive": acc_p, "accuracy_negative": acc_n,
                "roc_auc": float(roc_auc_score(np.r_[np.ones(len(pte)), np.zeros(len(nte))], np.r_[sp_, sn_])),
                "mean_score_positive": float(sp_.mean()), "mean_score_negative": float(sn_.mean())}
    model.info = {
        "positive": [str(p) for p in positive], "negative": [str(p) for p in negative],
        "documents": {"positive": int(Xp.shape[0]), "negative": int(Xn.shape[0]),
                      "train_positive": int(len(ptr)), "train_negative": int(len(ntr))},
        "bad_input": {"positive": rp.bad_input(), "negative": rn.bad_input()},
        "heldout": held,
        "train_accuracy": float(lr.score(X, y)),
        "parameters": {"heldout": heldout, "C": C, "seed": seed, "max_docs": max_docs, "text_field": text_field,
                       "class_weight": "balanced", **params},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise DataError(f"--out {out} is a directory; give a file name such as quality.safetensors")
        model.save(out)
    return model, model.info


# ------------------------------------------------------------------------------------------ filter
def plot_histogram(counts_all: np.ndarray, counts_kept: np.ndarray, alpha: float | None, threshold: float | None,
                   path: str | os.PathLike, title: str = "") -> None:
    """Score histogram of all and of kept documents, with the keep probability of the rule (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, len(counts_all) + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(centers, counts_all, width=width * 0.95, color="#c8c8c8", label="all documents")
    ax.bar(centers, counts_kept, width=width * 0.95, color="#2b7bba", label="kept")
    ax.set_xlabel("quality score P(reference-like)")
    ax.set_ylabel("documents")
    ax2 = ax.twinx()
    s = np.linspace(0, 1, 201)
    if threshold is not None:
        ax2.plot(s, (s >= threshold).astype(float), color="#d62728", label=f"keep if score ≥ {threshold}")
    else:
        ax2.plot(s, keep_probability(s, alpha), color="#d62728", label=f"P(keep) = (2 − s)^−{alpha:g}")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("probability of keeping")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".tmp.png") as tmp:  # the suffix tells matplotlib the format
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def _check_rule(alpha: float, threshold: float | None) -> None:
    if threshold is None and not alpha > 0:
        raise DataError(f"--alpha must be positive, got {alpha}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise DataError(f"--threshold must be in [0, 1], got {threshold}")


class _ScoreTally:
    """Running counts of a filter pass: documents, kept, the rule's expected kept count and its variance, the
    score sum, and the score histograms of all and of kept documents."""

    def __init__(self) -> None:
        self.edges = np.linspace(0, 1, HIST_BINS + 1)
        self.h_all, self.h_kept = np.zeros(HIST_BINS, dtype=np.int64), np.zeros(HIST_BINS, dtype=np.int64)
        self.n = self.kept = 0
        self.p_sum = self.p_var = self.s_sum = 0.0

    def add(self, scores: np.ndarray, keep: np.ndarray, p: np.ndarray) -> None:
        self.n += len(scores)
        self.kept += int(keep.sum())
        self.p_sum += float(p.sum())
        self.p_var += float((p * (1 - p)).sum())
        self.s_sum += float(scores.sum())
        self.h_all += np.histogram(scores, self.edges)[0]
        self.h_kept += np.histogram(scores[keep], self.edges)[0]

    def fields(self) -> dict:
        n, kept = self.n, self.kept
        return {
            "documents_in": n,
            "kept": kept,
            "rejected": n - kept,
            "kept_fraction": kept / n if n else None,
            # what the rule keeps on average for these scores, and the standard deviation of the kept fraction
            "expected_kept_fraction": self.p_sum / n if n else None,
            "expected_kept_fraction_std": math.sqrt(self.p_var) / n if n else None,
            "mean_score": self.s_sum / n if n else None,
            "score_histogram": {"edges": [round(e, 4) for e in self.edges.tolist()], "all": self.h_all.tolist(),
                                "kept": self.h_kept.tolist()},
        }


def filter_quality(model: QualityModel | str | os.PathLike, inputs: list[str | os.PathLike],
                   out: str | os.PathLike, alpha: float = 9.0, threshold: float | None = None, seed: int = 0,
                   text_field: str = "text", report: str | os.PathLike | None = None,
                   histogram: str | os.PathLike | None = None, rejected: str | os.PathLike | None = None,
                   score_field: str | None = None, progress: bool | None = None,
                   warn: Callable[[str], None] | None = None) -> dict:
    """Score the documents of `inputs` and keep them by the Pareto rule (`threshold` None) or by `score ≥
    threshold`. Kept documents go to `out` (JSONL, in input order, input fields preserved; with `score_field` the
    score is added under that name), rejected ones to `rejected` when given. Returns the report (also written to
    `report`, default `OUT.report.json`), and draws the score histogram to `histogram` (default `OUT.scores.png`).

    The Pareto draws come from `numpy.random.default_rng(seed)`, one per document in input order, so the same
    inputs, model and seed keep the same documents.
    """
    _check_rule(alpha, threshold)
    if score_field is not None and score_field == text_field:
        raise DataError(f"--score-field {score_field} is the text field: the score would replace each document's "
                        "text; choose another name")
    model_path = None if isinstance(model, QualityModel) else str(model)
    if model_path is not None:
        model = QualityModel.load(model_path)
    histogram = Path(histogram) if histogram is not None else sibling_path(output_path(out), ".scores.png")
    run = FilterPass(inputs, out, text_field=text_field, report=report, read_also=[model_path] if model_path else [],
                     others={"--histogram": histogram, "--removed": rejected}, warn=warn)
    rng = np.random.default_rng(seed)
    tally = _ScoreTally()
    with run.writing(rejected, progress, "quality filter") as w:
        for batch in batched(run.reader.records(), BATCH):
            scores = model.score([r.text for r in batch])
            if threshold is None:
                p = keep_probability(scores, alpha)
                # GPT-3 Appendix A: keep when np.random.pareto(alpha) > 1 - score
                keep = rng.pareto(alpha, size=len(batch)) > 1.0 - scores
            else:
                p = (scores >= threshold).astype(np.float64)
                keep = scores >= threshold
            tally.add(scores, keep, p)
            for rec, s, k in zip(batch, scores.tolist(), keep.tolist()):
                if score_field is not None and (k or w.writes_other):
                    rec = _with_score(rec, text_field, score_field, s)
                if k:
                    w.keep(rec.to_json(text_field))
                else:
                    w.drop(rec.to_json(text_field) if w.writes_other else None)
            w.advance()

    rule = ({"rule": "threshold", "threshold": threshold} if threshold is not None else
            {"rule": "pareto", "alpha": alpha, "seed": seed,
             "keep_if": f"numpy.random.default_rng({seed}).pareto({alpha:g}) > 1 - score"})
    rep = run.report(REPORT_FORMAT, {"model": model_path,
                                     "model_heldout_accuracy": model.info.get("heldout", {}).get("accuracy"),
                                     **rule, **tally.fields(), "histogram_png": str(histogram)})
    n, kept = tally.n, tally.kept
    try:
        title = (f"{n:,} documents, kept {kept:,} ({100 * kept / n:.1f}%)" if n else "no documents")
        plot_histogram(tally.h_all, tally.h_kept, alpha if threshold is None else None, threshold, histogram, title)
    except Exception as e:  # a missing or broken matplotlib must not lose a finished filter run
        rep["histogram_png"] = None
        run.warn(f"could not draw the score histogram ({e})")
    return run.finish(rep)


def _with_score(rec: Record, text_field: str, score_field: str, score: float) -> Record:
    fields = dict(rec.fields) if rec.fields is not None else text_file_fields(text_field, rec.text, rec.path)
    fields[score_field] = round(score, 6)
    return Record(rec.text, fields, rec.path, rec.line)
