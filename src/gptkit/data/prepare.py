"""`gptkit prepare`: text in, versioned token shards out.

    out_dir/
      train_000.bin, train_001.bin, ...   token shards (see gptkit.data.shards), at most `shard_tokens` each
      val_000.bin, ...
      tokenizer/                          the tokenizer (Tokenizer.from_pretrained(out_dir / "tokenizer"))
      manifest.json                       sources (paths, bytes, sha256, documents), tokenizer, dtype, splits
                                          (token and document counts, shard sha256), skip/replacement counts,
                                          the arguments and the gptkit version

The token stream is `doc_1 <|endoftext|> doc_2 <|endoftext|> ...`: every document is followed by the tokenizer's
end-of-text token (GPT-2's convention; GPT-1's vocabulary gets it added as a special token).

Train/val split (deterministic, independent of the number of workers):
- several documents: a document goes to val when a seeded hash of its text falls below `val_fraction`
  (blake2b keyed by `seed`), so about `val_fraction` of the documents are val, identical documents always land in
  the same split (no train/val leak through duplicates), and adding a file does not reshuffle the others. When
  the hash leaves one split empty, the last document is moved into it, so both splits are non-empty whenever
  `val_fraction > 0`.
- one document (tinyshakespeare): its tokens are cut at `int(n * (1 - val_fraction))`, n = its token count
  without the end-of-text token, exactly nanoGPT's `data[:int(n*0.9)]`; the train split is that prefix and the
  val split is the rest followed by the document's end-of-text token. With the char tokenizer tokens are
  characters, so train holds exactly nanoGPT's 1,003,854 training characters of tinyshakespeare and val its
  111,540 validation characters plus one end-of-text token.

Output is written atomically: everything is built in a hidden temporary directory beside `out_dir` and renamed
into place at the end, so an interrupted run leaves no half-written dataset. `out_dir` may be missing, an empty
directory, or a previous `gptkit prepare` output (recognised by its manifest.json) holding only what its manifest
names, which is replaced; any other non-empty directory is refused, so a typo cannot delete unrelated files.

Large inputs stream: documents are read one at a time, long ones are cut into pieces of ~256K characters at
points where the tokenizer would split words anyway (`gptkit.tokenizer.split_at_word_boundaries`), pieces are tokenized by `num_workers`
processes in batches that come back in order (at most 2 * workers + 2 batches in flight), and the tokens are
appended to the shard files as they come. Memory is bounded by the largest single document (its text, plus its
tokens at 2 bytes each), never by the corpus. Tokenizers that must see the data first make one extra streaming
pass: char collects the character set, bpe trains a byte-level BPE (`Tokenizer.train_bpe`, fed the same pieces).
The output is byte-identical for any number of workers.

Mixtures (GPT-3 §2.2, Table 2.2): with `sources` (CLI: `--source NAME=PATH:WEIGHT`, repeatable) instead of `inputs`,
the train split is a weighted mixture: sources "are not sampled in proportion to their size" (§2.2) but by weight,
so that small high-quality sources are seen more than once while large ones are not seen whole. The tokenizer is
learnt from all sources together. Each source is split into train/val by the rules above on its own (so every source
has val documents; the val split holds every source's val documents once, unweighted). The train split then holds
`mix_tokens` tokens (default: the sum of the sources' train tokens), source i contributing exactly round(weight_i /
Σ weights · mix_tokens) of them (largest-remainder rounding): whole passes over its documents, each pass in a fresh
seeded random order, then documents of one more random order until its share is reached (the last one cut to a
random window and ended with end-of-text). The sources are interleaved, the next document always coming from the
source furthest behind its share, so any stretch of the train stream that is long next to its documents holds the
sources in about their shares, whether the loader samples windows at random or reads in order. (Documents are not
split to interleave them, so a source of a few very long documents comes in long runs; random windows still see
every source in its share on average.) The manifest's `mixture` section gives each source's train tokens, share,
sampled tokens and effective epochs (sampled / train tokens, GPT-3 Table 2.2's "epochs elapsed"); `gptkit prepare`
prints it as a table. Deterministic for a given `seed`.
"""

from __future__ import annotations

import array
import contextlib
import functools
import hashlib
import heapq
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import __version__
from ..io import new_tmp_dir, parse_json, publish_dir
from ..runtime import Progress
from ..tokenizer import Tokenizer, split_at_word_boundaries
from .shards import FORMAT, FORMAT_VERSION, HEADER_BYTES, MANIFEST, VERSION, DataError, ShardWriter, dtype_for_vocab
from .sources import Corpus, is_prepared_dir
from .workers import default_workers, ordered_map, worker_pool

TOKENIZERS = ("char", "bpe", "gpt2", "gpt1")
TOKENIZER_DIR = "tokenizer"
EOT = "<|endoftext|>"
PIECE_CHARS = 1 << 18  # longer documents are tokenized in pieces of about this many characters
BATCH_CHARS = 1 << 18  # pieces go to the workers in batches of about this many characters ...
BATCH_DOCS = 1024  # ... or this many pieces


MAX_MIX_EPOCHS = 1000  # a mixture may repeat a source at most this many times (docs/data.md)
MAX_MIX_TOKENS = 1 << 53  # beyond this the shares by weight are not exact in float64 (and overflow int64 later)


# ------------------------------------------------------------------------------------------ tokenizing
_WORKER_TOKENIZER = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER

    _WORKER_TOKENIZER = Tokenizer.from_pretrained(tokenizer_dir)


def split_hash(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by the text and the seed: the document goes to val when it is < val_fraction."""
    h = hashlib.blake2b(digest_size=8, key=hashlib.sha256(str(seed).encode()).digest())
    for i in range(0, len(text), 1 << 20):  # in steps, so a huge document is not copied whole
        h.update(text[i:i + (1 << 20)].encode("utf-8"))
    return int.from_bytes(h.digest(), "little") / 2.0**64


def encode_pieces(texts: list[str], dtype: str, tokenizer=None) -> list[np.ndarray]:
    """Token ids (no end-of-text) of each text, as compact arrays; runs in a worker process."""
    tok = tokenizer if tokenizer is not None else _WORKER_TOKENIZER
    return [np.asarray(tok.encode(t), dtype=dtype) for t in texts]


# A batch is (texts, meta, bytes_read): meta[i] = (split hash of the document when texts[i] is its first
# piece else None, whether texts[i] is its last piece).
Batch = tuple[list[str], list[tuple[float | None, bool]], int]


def _piece_batches(docs: Iterable[str], corpus: Corpus, seed: int) -> Iterator[Batch]:
    """Documents cut into pieces and grouped into batches of about BATCH_CHARS characters; each batch carries
    the input bytes read so far (for the progress bar)."""
    texts: list[str] = []
    meta: list[tuple[float | None, bool]] = []
    chars = 0
    for doc in docs:
        pieces = split_at_word_boundaries(doc, PIECE_CHARS) if len(doc) > PIECE_CHARS else [doc]
        u = split_hash(doc, seed)
        del doc
        for j, piece in enumerate(pieces):
            texts.append(piece)
            meta.append((u if j == 0 else None, j == len(pieces) - 1))
            chars += len(piece)
            if chars >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
                yield texts, meta, corpus.bytes_read
                texts, meta, chars = [], [], 0
    if texts:
        yield texts, meta, corpus.bytes_read


Encoded = tuple[list[np.ndarray], list[tuple[float | None, bool]], int]  # a Batch with token arrays for texts


class _Encoder:
    """The tokenizer of a prepare run, its token dtype and end-of-text token, and where it runs: in this process
    (`pool` None) or in the pool's workers, each of which loaded the saved tokenizer (`_init_worker`)."""

    def __init__(self, tokenizer, pool: ProcessPoolExecutor | None, workers: int, progress, seed: int):
        self.tokenizer, self.pool, self.workers, self.bar, self.seed = tokenizer, pool, workers, progress, seed
        self.dtype = dtype_for_vocab(int(tokenizer.vocab_size))
        self.eot = np.array([int(tokenizer.eot_id)], dtype=self.dtype)

    def encoded(self, corpus: Corpus) -> Iterator[Encoded]:
        """The corpus's documents as encoded batches, in corpus order (at most 2 * workers + 2 batches in
        flight: see gptkit.data.workers)."""
        fn = encode_pieces if self.pool is not None else functools.partial(encode_pieces, tokenizer=self.tokenizer)
        jobs = (((meta, nbytes), (texts, self.dtype.str))
                for texts, meta, nbytes in _piece_batches(corpus.documents(), corpus, self.seed))
        for (meta, nbytes), arrays in ordered_map(fn, jobs, self.pool, self.workers):
            yield arrays, meta, nbytes


# ------------------------------------------------------------------------------------------ tokenizer
def build_tokenizer(kind: str, corpus: Corpus, vocab: str | None, vocab_size: int, progress) -> object:
    """The tokenizer for `kind`, trained on the corpus for char/bpe, loaded from `vocab` for gpt2/gpt1, with an
    end-of-text token."""

    if kind == "char":
        chars: set[str] = set()
        task = progress.add_task("reading characters", total=corpus.total_bytes)
        for doc in corpus.documents():
            chars.update(doc)
            progress.update(task, completed=corpus.bytes_read)
        progress.update(task, completed=corpus.total_bytes)
        _check_not_empty(corpus)
        tok = Tokenizer.train_char("".join(sorted(chars)))
    elif kind == "bpe":
        task = progress.add_task(f"training BPE ({vocab_size:,})", total=corpus.total_bytes)

        def docs() -> Iterator[str]:  # in pieces: the same words to count, in bounded memory
            for doc in corpus.documents():
                progress.update(task, completed=corpus.bytes_read)
                yield from split_at_word_boundaries(doc, PIECE_CHARS) if len(doc) > PIECE_CHARS else (doc,)

        tok = Tokenizer.train_bpe(docs(), vocab_size)
        progress.update(task, completed=corpus.total_bytes)
        _check_not_empty(corpus)
    else:
        tok = Tokenizer.from_pretrained(vocab)
        if getattr(tok, "kind", kind) != kind:
            raise DataError(f"--tokenizer {kind} but {vocab} holds a {tok.kind} vocabulary")
    if tok.eot_id is None:  # GPT-1's vocabulary has no end-of-text token: add one after its 40,478 ids
        tok.add_special_tokens([EOT])
    return tok


def _check_not_empty(corpus: Corpus) -> None:
    if corpus.summary()["documents"] == 0:
        raise DataError(f"empty corpus: no non-empty documents in {', '.join(corpus.inputs)}"
                        + (f" ({len(corpus.skipped_files)} non-text file(s) skipped)" if corpus.skipped_files
                           else ""))


# ------------------------------------------------------------------------------------------ output dir
def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not is_prepared_dir(out):
        raise DataError(f"--out {out} is a non-empty directory that is not a `gptkit prepare` output; "
                        "choose another directory or empty it")
    if out.is_dir() and (extra := _not_written_by_prepare(out)):
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise DataError(f"--out {out} is a `gptkit prepare` output that also holds {shown}, which prepare did not "
                        f"write: replacing it would delete them; move them, or choose another directory")


def _not_written_by_prepare(out: Path) -> list[str]:
    """The entries of a previous prepare output that its manifest does not account for (a run trained into it, a
    user's notes): replacing the directory would lose them. [] when the manifest cannot say (then it is replaced,
    as a damaged output)."""
    try:
        m = parse_json((out / MANIFEST).read_text(encoding="utf-8"))
        shards = {s["file"] for split in m["splits"].values() for s in split["shards"]}
        ours = {MANIFEST, m["tokenizer"]["dir"], *shards}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith("."))  # .DS_Store


def _warn(msg: str) -> None:
    print(f"gptkit: warning: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ mixtures
@dataclass(frozen=True)
class MixtureSource:
    """One named source of a mixture: its inputs (files, directories, JSONL, .gz) and its weight. Weights are
    relative: a source's share of the train tokens is its weight over the sum of the weights."""

    name: str
    inputs: list[str]
    weight: float


_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_source(spec: str) -> MixtureSource:
    """`NAME=PATH:WEIGHT` -> MixtureSource (the path may itself hold ':' or '='; the weight is after the last ':')."""
    name, eq, rest = spec.partition("=")
    path, colon, weight = rest.rpartition(":")
    if not eq or not colon or not name or not path:
        raise DataError(f"--source {spec!r}: expected NAME=PATH:WEIGHT, e.g. --source wiki=data/wiki.jsonl:3")
    if not _SOURCE_NAME.match(name):
        raise DataError(f"--source {spec!r}: the name must be letters, digits, '_', '.', '-'")
    try:
        w = float(weight)
    except ValueError:
        raise DataError(f"--source {spec!r}: weight {weight!r} is not a number") from None
    if not (w > 0 and math.isfinite(w)):
        raise DataError(f"--source {spec!r}: the weight must be a positive number")
    return MixtureSource(name, [path], w)


def merge_sources(sources: list[MixtureSource]) -> list[MixtureSource]:
    """Sources with the same name become one source with all their inputs (their weights must agree)."""
    merged: dict[str, MixtureSource] = {}
    for src in sources:
        if src.name in merged:
            if merged[src.name].weight != src.weight:
                raise DataError(f"--source {src.name} is given twice with different weights "
                                f"({merged[src.name].weight:g} and {src.weight:g})")
            merged[src.name] = MixtureSource(src.name, merged[src.name].inputs + src.inputs, src.weight)
        else:
            merged[src.name] = src
    return list(merged.values())


def _check_mixture(inputs: list[str] | None, sources: list[MixtureSource] | None,
                   mix_tokens: int | None) -> list[MixtureSource] | None:
    if sources and inputs:
        raise DataError("give either --input (one corpus) or --source NAME=PATH:WEIGHT (a mixture), not both")
    if not sources:
        if mix_tokens is not None:
            raise DataError("--mix-tokens is for mixtures (--source NAME=PATH:WEIGHT)")
        if not inputs:
            raise DataError("no inputs given: pass --input PATH... or --source NAME=PATH:WEIGHT")
        return None
    if mix_tokens is not None and not 0 < mix_tokens <= MAX_MIX_TOKENS:
        raise DataError(f"--mix-tokens must be positive and at most 2**53 = {MAX_MIX_TOKENS:,}, got {mix_tokens:,}")
    return merge_sources(list(sources))


def shares_to_tokens(weights: list[float], total: int) -> list[int]:
    """Split `total` tokens by weight, rounding by largest remainder so the parts sum to `total` exactly."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    parts = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - parts), kind="stable")[:total - int(parts.sum())]:
        parts[i] += 1
    return [int(p) for p in parts]


class _DocFile:
    """A source's training documents, waiting to be mixed: tokens appended to a raw file, document ends kept
    (8 bytes per document)."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self._f = open(path, "wb")
        self.ends = array.array("q")
        self.total = 0

    def add(self, pieces: list[np.ndarray], eot: np.ndarray | None) -> None:
        for a in [*pieces, *(() if eot is None else (eot,))]:
            self._f.write(np.ascontiguousarray(a, dtype=self.dtype).tobytes())
            self.total += len(a)
        if self.total > (self.ends[-1] if self.ends else 0):  # an empty piece is no document
            self.ends.append(self.total)

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens as a read-only memmap, document ends)."""
        self._f.close()
        tokens = (np.memmap(self.path, dtype=self.dtype, mode="r") if self.total else np.empty(0, self.dtype))
        return tokens, np.frombuffer(self.ends, dtype=np.int64)


def sample_segments(ends: np.ndarray, target: int, rng: np.random.Generator) -> Iterator[tuple[int, int, bool]]:
    """(start, stop, cut) token ranges of a source's documents (each ending with its end-of-text token) that add
    up to exactly `target` tokens: whole passes over the documents, each in a fresh random order, then documents
    of one more random order until the target is reached. The document that would overshoot is cut to a random
    window of the tokens still needed, less one (`cut` True): the caller ends it with an end-of-text token."""
    starts = np.concatenate([[0], ends[:-1]])
    left = target
    while left > 0:
        for d in rng.permutation(len(ends)).tolist():
            a, b = int(starts[d]), int(ends[d])
            if b - a <= left:
                yield a, b, False
                left -= b - a
            else:
                take = left - 1
                off = int(rng.integers(0, (b - a - 1) - take + 1))  # within the document, before its end-of-text
                yield a + off, a + off + take, True
                left = 0
            if left == 0:
                return


def _tokenize_source(i: int, src: MixtureSource, req: PrepareRequest, enc: _Encoder,
                     writers: dict[str, ShardWriter], tmp: Path) -> tuple[Corpus, _DocFile, dict]:
    """Split one source of a mixture into train/val on its own (module docstring): its val documents go straight
    to the val shards, its train documents to a temporary file, to be mixed. Returns its corpus, that file and
    its row of the manifest's "mixture" section (counts so far)."""
    c = Corpus(src.inputs, text_field=req.text_field)
    df = _DocFile(tmp / f".mix-{i}.tok", enc.dtype)
    task = enc.bar.add_task(f"tokenizing {src.name}", total=c.total_bytes)

    def emit(split: str, pieces: list[np.ndarray], with_eot: bool) -> None:
        if split == "train":
            df.add(pieces, enc.eot if with_eot else None)
        else:
            _write_doc(writers["val"], pieces, enc.eot if with_eot else None)

    val_before = writers["val"].total
    policy, nd = split_documents(enc.encoded(c), req.val_fraction, emit,
                                 lambda nb: enc.bar.update(task, completed=nb), cut_eot=True)
    enc.bar.update(task, completed=c.total_bytes)
    if c.summary()["documents"] == 0:
        raise DataError(f"--source {src.name}: no non-empty documents in {', '.join(src.inputs)}")
    if df.total == 0:
        raise DataError(f"--source {src.name}: no training tokens (its only document went to val; "
                        "lower --val-fraction or add documents)")
    row = {"name": src.name, "inputs": src.inputs, "weight": src.weight, "split_policy": policy,
           "documents": c.summary()["documents"], "train_documents": nd["train"], "val_documents": nd["val"],
           "train_tokens": df.total, "val_tokens": writers["val"].total - val_before}
    return c, df, row


def _interleave(data: list[tuple[np.ndarray, np.ndarray]], targets: list[int], seed: int, enc: _Encoder,
                train: ShardWriter) -> tuple[list[int], list[int]]:
    """Write each source's `targets[i]` train tokens (`sample_segments` of its documents `data[i]` = (tokens,
    document ends)) to `train`, the next document always from the source furthest behind its share. Returns
    the tokens and documents written per source."""
    streams = [sample_segments(ends, t, np.random.default_rng([seed, i]))
               for i, ((_, ends), t) in enumerate(zip(data, targets))]
    written, docs = [0] * len(data), [0] * len(data)
    heap = [(0.0, i) for i, t in enumerate(targets) if t > 0]
    heapq.heapify(heap)
    task = enc.bar.add_task("mixing", total=sum(targets))
    done = 0
    while heap:
        _, i = heapq.heappop(heap)
        a, b, cut = next(streams[i])
        train.write(data[i][0][a:b])
        n = b - a
        if cut:
            train.write(enc.eot)
            n += 1
        written[i] += n
        docs[i] += 1
        done += n
        if written[i] < targets[i]:
            heapq.heappush(heap, (written[i] / targets[i], i))
        if docs[i] % 1024 == 0:
            enc.bar.update(task, completed=done)
    enc.bar.update(task, completed=sum(targets))
    return written, docs


def _write_mixture(req: PrepareRequest, enc: _Encoder, writers: dict[str, ShardWriter], tmp: Path) -> _Split:
    """Tokenize each source, then write the train shards: `mix_tokens` tokens, each source's share by weight,
    the sources interleaved so that every stretch of the stream holds them in about their shares (GPT-3 §2.2,
    Table 2.2)."""
    mixture = req.mixture
    corpora, files, rows = zip(*(_tokenize_source(i, src, req, enc, writers, tmp) for i, src in enumerate(mixture)))
    total = req.mix_tokens if req.mix_tokens is not None else sum(r["train_tokens"] for r in rows)
    targets = shares_to_tokens([src.weight for src in mixture], total)
    for r, t in zip(rows, targets):  # before any mixing: a typo in --mix-tokens must not fill the disk
        if t > MAX_MIX_EPOCHS * r["train_tokens"]:
            raise DataError(f"--mix-tokens {total:,}: source {r['name']} would be repeated {t / r['train_tokens']:,.0f} "
                            f"times (its share {t:,} of {r['train_tokens']:,} train tokens); at most "
                            f"{MAX_MIX_EPOCHS:,} passes over a source are allowed: lower --mix-tokens or that "
                            "source's weight, or add data")
    data = [df.close() for df in files]
    written, docs = _interleave(data, targets, req.seed, enc, writers["train"])
    data.clear()  # close the memmaps before their files go
    for df in files:
        df.path.unlink()
    weight_sum = sum(src.weight for src in mixture)
    for r, t, w, d in zip(rows, targets, written, docs):
        assert w == t
        r.update({"share": r["weight"] / weight_sum, "sampled_tokens": t, "sampled_documents": d,
                  # GPT-3 Table 2.2's "epochs elapsed when training for 300B tokens", here for mix_tokens
                  "effective_epochs": t / r["train_tokens"]})
    info = {"train_tokens": total, "default_total": req.mix_tokens is None, "seed": req.seed,
            "order": "interleaved: the next document comes from the source furthest behind its share",
            "sources": list(rows)}
    ndocs = {"train": sum(docs), "val": sum(r["val_documents"] for r in rows)}
    return _Split("per-source", ndocs, list(corpora), info)


# ------------------------------------------------------------------------------------------ prepare
@dataclass
class PrepareRequest:
    """What a `prepare` call asks for (the arguments of `prepare`), checked when it is made: a mistake costs
    nothing. `mixture` is `sources` with sources of the same name merged; `out` the absolute output directory."""

    inputs: list[str] | None
    out: str | os.PathLike
    tokenizer: str = "char"
    vocab: str | None = None
    vocab_size: int = 4096
    val_fraction: float = 0.1
    text_field: str = "text"
    shard_tokens: int = 100_000_000
    seed: int = 1337
    sources: list[MixtureSource] | None = None
    mix_tokens: int | None = None

    def __post_init__(self) -> None:
        self.mixture = _check_mixture(self.inputs, self.sources, self.mix_tokens)
        tokenizer, vocab = self.tokenizer, self.vocab
        if tokenizer not in TOKENIZERS:
            raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
        if tokenizer in ("gpt2", "gpt1"):
            if not vocab:
                raise DataError(f"--tokenizer {tokenizer} needs its vocabulary directory: pass --vocab DIR "
                                f"(e.g. --vocab ../shared/data/{tokenizer}-bpe-vocab)")
            if not Path(vocab).is_dir():
                raise DataError(f"--vocab {vocab}: not a directory")
        elif vocab:
            raise DataError(f"--vocab is for --tokenizer gpt2/gpt1; --tokenizer {tokenizer} learns its vocabulary "
                            "from the input")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if tokenizer == "bpe" and self.vocab_size < 257:
            raise DataError(f"--vocab-size must be at least 257 for a byte-level BPE (256 bytes + end-of-text), "
                            f"got {self.vocab_size}")
        if self.shard_tokens <= 0:
            raise DataError(f"shard_tokens must be positive, got {self.shard_tokens}")
        self.out = Path(self.out).expanduser().absolute()
        _check_out_dir(self.out)

    @property
    def all_inputs(self) -> list[str]:
        """Every input; a mixture's tokenizer is learnt from (or checked against) all of its sources together."""
        return list(self.inputs) if self.mixture is None else [p for src in self.mixture for p in src.inputs]

    def arguments(self) -> dict:
        """The manifest's record of the request."""
        args = {"inputs": [str(i) for i in self.inputs or []], "tokenizer": self.tokenizer, "vocab": self.vocab,
                "vocab_size": self.vocab_size if self.tokenizer == "bpe" else None,
                "val_fraction": self.val_fraction, "text_field": self.text_field, "shard_tokens": self.shard_tokens,
                "seed": self.seed}
        if self.mixture is not None:
            args["sources"] = [{"name": m.name, "inputs": m.inputs, "weight": m.weight} for m in self.mixture]
            args["mix_tokens"] = self.mix_tokens
        return args


class _Split(NamedTuple):
    """What splitting and encoding produced: the split policy, documents per split, the corpora read (one, or
    one per mixture source) and the manifest's "mixture" section (None for one corpus)."""

    policy: str
    documents: dict[str, int]
    corpora: list[Corpus]
    mixture: dict | None


def prepare(inputs: list[str] | None, out_dir: str | os.PathLike, tokenizer: str = "char", vocab: str | None = None,
            vocab_size: int = 4096, val_fraction: float = 0.1, text_field: str = "text",
            num_workers: int | None = None, shard_tokens: int = 100_000_000, seed: int = 1337,
            progress: bool | None = None, warn: Callable[[str], None] = _warn,
            sources: list[MixtureSource] | None = None, mix_tokens: int | None = None) -> dict:
    """Tokenize `inputs` into train/val token shards in `out_dir` and return the manifest (see module docstring).

    Args:
        inputs: text files, directories (recursive), JSONL files, `.gz` of these (see gptkit.data.sources).
            None or empty when `sources` is given.
        tokenizer: "char" (characters of the corpus), "bpe" (byte-level BPE of `vocab_size` trained on the
            corpus), "gpt2" or "gpt1" (the vocabulary in directory `vocab`).
        val_fraction: share of documents (several documents) or of tokens (one document) held out for val.
        num_workers: tokenizing processes; None picks 1 for small corpora, else the usable cores (at most 8).
            The output does not depend on it.
        shard_tokens: tokens per shard file.
        progress: show a progress bar on stderr (None: when stderr is a terminal).
        sources: a weighted mixture instead of `inputs` (see `MixtureSource` and the "Mixtures" section of the
            module docstring): the train split holds `mix_tokens` tokens, each source's share of them by weight.
        mix_tokens: train tokens of a mixture (default: the sum of the sources' train tokens).
    """
    t0 = time.perf_counter()
    req = PrepareRequest(inputs, out_dir, tokenizer, vocab, vocab_size, val_fraction, text_field, shard_tokens, seed,
                         sources, mix_tokens)
    corpus = Corpus(req.all_inputs, text_field=text_field)  # finds the input files; reads nothing yet
    if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) < 1):
        raise DataError(f"--workers must be at least 1, got {num_workers}")
    workers = default_workers(corpus.total_bytes) if num_workers is None else int(num_workers)

    tmp = new_tmp_dir(req.out)  # renamed to `out` when complete (replacing an empty dir or an earlier output)
    try:
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(Progress(live=progress, bytes=True))  # off a terminal: nothing
            tok = build_tokenizer(req.tokenizer, corpus, req.vocab, req.vocab_size, bar)
            tok.save(tmp / TOKENIZER_DIR)
            dtype = dtype_for_vocab(int(tok.vocab_size))
            writers = {s: ShardWriter(tmp, s, dtype, req.shard_tokens, int(tok.vocab_size)) for s in ("train", "val")}
            pool = stack.enter_context(worker_pool(workers, bar, _init_worker, (str(tmp / TOKENIZER_DIR),)))
            enc = _Encoder(tok, pool, workers, bar, req.seed)
            split = _write_corpus(req, corpus, enc, writers) if req.mixture is None else \
                _write_mixture(req, enc, writers, tmp)
            splits = {s: {"tokens": w.total, "documents": split.documents[s], "shards": w.close()}
                      for s, w in writers.items()}
        manifest = _manifest(req, tok, corpus, split, splits, {"workers": workers,
                                                               "seconds": round(time.perf_counter() - t0, 3)})
        _write_json(tmp / MANIFEST, manifest)
        _check_out_dir(req.out)  # nothing appeared there while we worked
        publish_dir(tmp, req.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for c in split.corpora:
        for w in c.warnings():
            warn(w)
    if val_fraction > 0 and manifest["splits"]["val"]["tokens"] == 0:
        warn("the val split is empty")
    return manifest


def _write_corpus(req: PrepareRequest, corpus: Corpus, enc: _Encoder, writers: dict[str, ShardWriter]) -> _Split:
    """Split one corpus into train/val by the module docstring's rules and write both splits' shards."""
    task = enc.bar.add_task("tokenizing", total=corpus.total_bytes)

    def emit(split: str, pieces: list[np.ndarray], with_eot: bool) -> None:
        _write_doc(writers[split], pieces, enc.eot if with_eot else None)

    policy, ndocs = split_documents(enc.encoded(corpus), req.val_fraction, emit,
                                    lambda nb: enc.bar.update(task, completed=nb))
    enc.bar.update(task, completed=corpus.total_bytes)
    _check_not_empty(corpus)
    return _Split(policy, ndocs, [corpus], None)


def _manifest(req: PrepareRequest, tok, corpus: Corpus, split: _Split, splits: dict, run: dict) -> dict:
    """manifest.json (module docstring): what was asked, the tokenizer, the shard format, the splits, the input."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gptkit_version": _version(),
        "arguments": req.arguments(),
        "tokenizer": {"kind": tok.kind, "vocab_size": int(tok.vocab_size), "eot_id": int(tok.eot_id),
                      "dir": TOKENIZER_DIR, "source": str(Path(req.vocab).absolute()) if req.vocab else None},
        "dtype": dtype_for_vocab(int(tok.vocab_size)).name,
        "shard_format": {"magic": "GPTKTOK", "version": VERSION, "header_bytes": HEADER_BYTES},
        "split": {"policy": split.policy, "val_fraction": req.val_fraction, "seed": req.seed},
        "splits": splits,
        "documents": {k: sum(c.summary()[k] for c in split.corpora) for k in corpus.summary()},
        "sources": [st.to_dict() for st in corpus.stats],
        "skipped_files": corpus.skipped_files,
        "run": run,
    }
    if req.mixture is not None:
        manifest["sources"] = [{**st.to_dict(), "mixture_source": m.name}
                               for m, c in zip(req.mixture, split.corpora) for st in c.stats]
        manifest["mixture"] = split.mixture
    return manifest


def _write_doc(writer: ShardWriter, pieces: list[np.ndarray], eot: np.ndarray | None) -> None:
    for a in pieces:
        writer.write(a)
    if eot is not None:
        writer.write(eot)


def split_documents(encoded: Iterable[tuple[list[np.ndarray], list[tuple[float | None, bool]], int]],
                    val_fraction: float, emit: Callable[[str, list[np.ndarray], bool], None],
                    on_batch: Callable[[int], None] = lambda nbytes: None,
                    cut_eot: bool = False) -> tuple[str, dict[str, int]]:
    """Send every encoded document to `emit(split, pieces, with_eot)` by the split policy of the module docstring,
    and return (policy, documents per split); policy "empty" when there was no document.

    With one document, its tokens are cut nanoGPT's way: train gets the first part, without an end-of-text token
    unless `cut_eot` (a mixture repeats a source's documents, and they must stay separated), val gets the rest
    followed by the end-of-text token.
    """
    ndocs = {"train": 0, "val": 0}
    # `pending` is the latest document (a list of token arrays, one per piece) and its split: it is emitted when
    # the next document starts, so the last one can still change split (see the module docstring).
    pending: tuple[list[np.ndarray], str] | None = None
    for arrays, meta, nbytes in encoded:
        for ids, (u, _last) in zip(arrays, meta):
            if u is None:  # a later piece of the current document
                pending[0].append(ids)
                continue
            if pending is not None:
                emit(pending[1], pending[0], True)
                ndocs[pending[1]] += 1
            pending = ([ids], "val" if u < val_fraction else "train")
        on_batch(nbytes)
    if pending is None:
        return "empty", ndocs
    pieces, split = pending
    if sum(ndocs.values()) == 0:  # one document: cut its tokens as nanoGPT does
        n = sum(len(a) for a in pieces)
        k = int(n * (1 - val_fraction))
        train, val, pos = [], [], 0
        for a in pieces:  # tokens [0, k) to train, [k, n) to val, without concatenating the pieces
            train.append(a[:max(0, k - pos)])
            val.append(a[max(0, k - pos):])
            pos += len(a)
        emit("train", train, (cut_eot or k == n) and k > 0)  # all of it in train (--val-fraction 0): a whole
        if k < n:  # document, with its end-of-text token; val then holds nothing, not a lone end-of-text token
            emit("val", val, True)
        return "single-document", {"train": int(k > 0), "val": int(k < n)}
    if val_fraction > 0 and ndocs["val"] == 0:
        split = "val"
    elif ndocs["train"] == 0:
        split = "train"
    emit(split, pieces, True)
    ndocs[split] += 1
    return "document-hash", ndocs


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _version() -> str:
    return __version__
