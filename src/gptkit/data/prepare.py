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
directory, or a previous `gptkit prepare` output (recognised by its manifest.json), which is replaced; any other
non-empty directory is refused, so a typo cannot delete unrelated files.

Large inputs stream: documents are read one at a time, tokenized by `num_workers` processes in batches that
come back in order (at most a few batches in flight, so memory stays bounded), and appended to the shard files as
they come. Tokenizers that must see the data first make one extra streaming pass: char collects the character set,
bpe trains a byte-level BPE (`Tokenizer.train_bpe`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .shards import HEADER_BYTES, VERSION, DataError, ShardWriter, dtype_for_vocab
from .sources import Corpus, is_prepared_dir

TOKENIZERS = ("char", "bpe", "gpt2", "gpt1")
MANIFEST = "manifest.json"
FORMAT = "gptkit-prepared"
FORMAT_VERSION = 1
EOT = "<|endoftext|>"
BATCH_CHARS = 1 << 20  # documents are sent to workers in batches of about this many characters
BATCH_DOCS = 1024
SMALL_CORPUS_BYTES = 8 << 20  # below this, worker start-up costs more than it saves: one process by default


def default_workers(total_bytes: int) -> int:
    if total_bytes < SMALL_CORPUS_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


# ------------------------------------------------------------------------------------------ tokenizing
_WORKER_TOKENIZER = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    from ..tokenizer import Tokenizer

    _WORKER_TOKENIZER = Tokenizer.from_pretrained(tokenizer_dir)


def split_hash(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by the text and the seed: the document goes to val when it is < val_fraction."""
    key = hashlib.sha256(str(seed).encode()).digest()[:32]
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def encode_docs(texts: list[str], seed: int, dtype: str, tokenizer=None) -> list[tuple[np.ndarray, float]]:
    """Token ids (without end-of-text) and split hash of each document; runs in a worker process."""
    tok = tokenizer if tokenizer is not None else _WORKER_TOKENIZER
    return [(np.asarray(tok.encode(t), dtype=dtype), split_hash(t, seed)) for t in texts]


def _batches(docs: Iterable[str], corpus: Corpus) -> Iterator[tuple[list[str], int]]:
    """Group documents into batches; each batch carries the input bytes read so far (for the progress bar)."""
    batch, chars = [], 0
    for d in docs:
        batch.append(d)
        chars += len(d)
        if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch, corpus.bytes_read
            batch, chars = [], 0
    if batch:
        yield batch, corpus.bytes_read


def _encoded(corpus: Corpus, tokenizer, tokenizer_dir: Path, seed: int, dtype: str,
             num_workers: int) -> Iterator[tuple[list[tuple[np.ndarray, float]], int]]:
    """Encoded batches in corpus order. With several workers at most 2 * workers + 2 batches are in flight."""
    batches = _batches(corpus.documents(), corpus)
    if num_workers <= 1:
        for texts, nbytes in batches:
            yield encode_docs(texts, seed, dtype, tokenizer), nbytes
        return
    # spawn, not fork: the parent may hold Rust thread pools (HF tokenizers) that do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(str(tokenizer_dir),)) as pool:
        inflight: collections.deque = collections.deque()
        for texts, nbytes in batches:
            inflight.append((pool.apply_async(encode_docs, (texts, seed, dtype)), nbytes))
            if len(inflight) >= 2 * num_workers + 2:
                res, nb = inflight.popleft()
                yield res.get(), nb
        while inflight:
            res, nb = inflight.popleft()
            yield res.get(), nb


# ------------------------------------------------------------------------------------------ tokenizer
def build_tokenizer(kind: str, corpus: Corpus, vocab: str | None, vocab_size: int, progress) -> object:
    """The tokenizer for `kind`, trained on the corpus for char/bpe, loaded from `vocab` for gpt2/gpt1, with an
    end-of-text token."""
    from ..tokenizer import Tokenizer

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

        def docs() -> Iterator[str]:
            for doc in corpus.documents():
                progress.update(task, completed=corpus.bytes_read)
                yield doc

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


def _install(tmp: Path, out: Path) -> None:
    """Move the finished tmp dir to `out`, replacing an empty dir or a previous prepare output."""
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "d")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


class _NoProgress:
    def add_task(self, *a, **k) -> int:
        return 0

    def update(self, *a, **k) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a) -> None:
        pass


def _progress(enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False)


def _warn(msg: str) -> None:
    print(f"gptkit: warning: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ prepare
def prepare(inputs: list[str], out_dir: str | os.PathLike, tokenizer: str = "char", vocab: str | None = None,
            vocab_size: int = 4096, val_fraction: float = 0.1, text_field: str = "text",
            num_workers: int | None = None, shard_tokens: int = 100_000_000, seed: int = 1337,
            progress: bool | None = None, warn: Callable[[str], None] = _warn) -> dict:
    """Tokenize `inputs` into train/val token shards in `out_dir` and return the manifest (see module docstring).

    Args:
        inputs: text files, directories (recursive), JSONL files, `.gz` of these (see gptkit.data.sources).
        tokenizer: "char" (characters of the corpus), "bpe" (byte-level BPE of `vocab_size` trained on the
            corpus), "gpt2" or "gpt1" (the vocabulary in directory `vocab`).
        val_fraction: share of documents (several documents) or of tokens (one document) held out for val.
        num_workers: tokenizing processes; None picks 1 for small corpora, else the usable cores (at most 8).
            The output does not depend on it.
        shard_tokens: tokens per shard file.
        progress: show a progress bar on stderr (None: when stderr is a terminal).
    """
    t0 = time.perf_counter()
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
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if tokenizer == "bpe" and vocab_size < 257:
        raise DataError(f"--vocab-size must be at least 257 for a byte-level BPE (256 bytes + end-of-text), "
                        f"got {vocab_size}")
    if shard_tokens <= 0:
        raise DataError(f"shard_tokens must be positive, got {shard_tokens}")
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out)
    corpus = Corpus(inputs, text_field=text_field)
    workers = default_workers(corpus.total_bytes) if num_workers is None else max(1, int(num_workers))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.prepare-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # not mkdtemp: it would be 0700 once renamed to out_dir, here the umask decides
    try:
        with _progress(progress) as bar:
            tok = build_tokenizer(tokenizer, corpus, vocab, vocab_size, bar)
            tok_dir = tmp / "tokenizer"
            tok.save(tok_dir)
            eot, vsize = int(tok.eot_id), int(tok.vocab_size)
            dtype = dtype_for_vocab(vsize)
            writers = {s: ShardWriter(tmp, s, dtype, shard_tokens, vsize) for s in ("train", "val")}
            ndocs = {"train": 0, "val": 0}
            eot_arr = np.array([eot], dtype=dtype)
            pending: tuple[np.ndarray, str] | None = None  # the latest document, held back (see docstring)

            task = bar.add_task("tokenizing", total=corpus.total_bytes)
            for results, nbytes in _encoded(corpus, tok, tok_dir, seed, dtype.str, workers):
                for ids, u in results:
                    if pending is not None:
                        writers[pending[1]].write(pending[0])
                        writers[pending[1]].write(eot_arr)
                        ndocs[pending[1]] += 1
                    pending = (ids, "val" if u < val_fraction else "train")
                bar.update(task, completed=nbytes)
            bar.update(task, completed=corpus.total_bytes)
            _check_not_empty(corpus)

            assert pending is not None
            ids, split = pending
            if sum(ndocs.values()) == 0:  # one document: cut its tokens as nanoGPT does
                policy = "single-document"
                k = int(len(ids) * (1 - val_fraction))
                writers["train"].write(ids[:k])
                writers["val"].write(ids[k:])
                writers["val"].write(eot_arr)
                ndocs = {"train": int(k > 0), "val": 1}
            else:
                policy = "document-hash"
                if val_fraction > 0 and ndocs["val"] == 0:
                    split = "val"
                elif ndocs["train"] == 0:
                    split = "train"
                writers[split].write(ids)
                writers[split].write(eot_arr)
                ndocs[split] += 1
            shards = {s: w.close() for s, w in writers.items()}

        summary = corpus.summary()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "gptkit_version": _version(),
            "arguments": {"inputs": [str(i) for i in inputs], "tokenizer": tokenizer, "vocab": vocab,
                          "vocab_size": vocab_size if tokenizer == "bpe" else None, "val_fraction": val_fraction,
                          "text_field": text_field, "shard_tokens": shard_tokens, "seed": seed},
            "tokenizer": {"kind": tok.kind, "vocab_size": vsize, "eot_id": eot, "dir": "tokenizer",
                          "source": str(Path(vocab).absolute()) if vocab else None},
            "dtype": dtype.name,
            "shard_format": {"magic": "GPTKTOK", "version": VERSION, "header_bytes": HEADER_BYTES},
            "split": {"policy": policy, "val_fraction": val_fraction, "seed": seed},
            "splits": {s: {"tokens": writers[s].total, "documents": ndocs[s], "shards": shards[s]}
                       for s in ("train", "val")},
            "documents": summary,
            "sources": [st.to_dict() for st in corpus.stats],
            "skipped_files": corpus.skipped_files,
            "run": {"workers": workers, "seconds": round(time.perf_counter() - t0, 3)},
        }
        _write_json(tmp / MANIFEST, manifest)
        _check_out_dir(out)  # nothing appeared there while we worked
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for w in corpus.warnings():
        warn(w)
    if val_fraction > 0 and manifest["splits"]["val"]["tokens"] == 0:
        warn("the val split is empty")
    return manifest


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _version() -> str:
    from .. import __version__

    return __version__
