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

Large inputs stream: documents are read one at a time, long ones are cut into pieces of ~256K characters at
points where the tokenizer would split words anyway (`cut_pieces`), pieces are tokenized by `num_workers`
processes in batches that come back in order (at most 2 * workers + 2 batches in flight), and the tokens are
appended to the shard files as they come. Memory is bounded by the largest single document (its text, plus its
tokens at 2 bytes each), never by the corpus. Tokenizers that must see the data first make one extra streaming
pass: char collects the character set, bpe trains a byte-level BPE (`Tokenizer.train_bpe`, fed the same pieces).
The output is byte-identical for any number of workers.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .shards import HEADER_BYTES, VERSION, DataError, ShardWriter, dtype_for_vocab
from .sources import Corpus, is_prepared_dir

TOKENIZERS = ("char", "bpe", "gpt2", "gpt1")
MANIFEST = "manifest.json"
FORMAT = "gptkit-prepared"
FORMAT_VERSION = 1
EOT = "<|endoftext|>"
PIECE_CHARS = 1 << 18  # longer documents are tokenized in pieces of about this many characters (cut_pieces)
BATCH_CHARS = 1 << 18  # pieces go to the workers in batches of about this many characters ...
BATCH_DOCS = 1024  # ... or this many pieces
_SAFE_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")  # a single space or newline between two non-space characters
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
    h = hashlib.blake2b(digest_size=8, key=hashlib.sha256(str(seed).encode()).digest())
    for i in range(0, len(text), 1 << 20):  # in steps, so a huge document is not copied whole
        h.update(text[i:i + (1 << 20)].encode("utf-8"))
    return int.from_bytes(h.digest(), "little") / 2.0**64


def cut_pieces(text: str, piece_chars: int) -> list[str]:
    """Cut a long document into pieces of about `piece_chars` that tokenize to the same ids as the whole.

    Each cut is just before a single space or newline that sits between two non-space characters: GPT-2's
    pre-tokenizer regex (tiktoken, and the `tokenizers` ByteLevel pre-tokenizer of our BPE) always ends a word
    at that non-space character and starts the next at that space, and GPT-1's BERT pre-tokenizer splits at every
    whitespace; a char tokenizer does not care. (gptkit.tokenizer encodes long texts in parallel the same way;
    the tests check the ids against one `encode` of the whole text.) So a 1 GB text file is tokenized in parallel
    pieces and never becomes one list of 250 M Python ints.
    """
    pieces, start, n = [], 0, len(text)
    while n - start > piece_chars:
        m = _SAFE_CUT.search(text, start + piece_chars)
        if m is None:
            break
        pieces.append(text[start:m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def encode_pieces(texts: list[str], dtype: str, tokenizer=None) -> list[np.ndarray]:
    """Token ids (no end-of-text) of each text, as compact arrays; runs in a worker process."""
    tok = tokenizer if tokenizer is not None else _WORKER_TOKENIZER
    return [np.asarray(tok.encode(t), dtype=dtype) for t in texts]


# A batch is (texts, meta, bytes_read): meta[i] = (split hash of the document when texts[i] is its first
# piece else None, whether texts[i] is its last piece).
Batch = tuple[list[str], list[tuple[float | None, bool]], int]


def _batches(docs: Iterable[str], corpus: Corpus, seed: int) -> Iterator[Batch]:
    """Documents cut into pieces and grouped into batches of about BATCH_CHARS characters; each batch carries
    the input bytes read so far (for the progress bar)."""
    texts: list[str] = []
    meta: list[tuple[float | None, bool]] = []
    chars = 0
    for doc in docs:
        pieces = cut_pieces(doc, PIECE_CHARS) if len(doc) > PIECE_CHARS else [doc]
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


def _start_pool(num_workers: int, tokenizer_dir: Path) -> ProcessPoolExecutor:
    """Worker processes that each load the saved tokenizer. (A ProcessPoolExecutor rather than a
    multiprocessing.Pool: when a worker dies, e.g. killed for memory, it raises instead of waiting forever.)

    fork where the platform has it (Linux): workers start in milliseconds and, unlike spawn, do not re-run the
    caller's `__main__`, so `prepare(..., num_workers=4)` also works from a script without an
    `if __name__ == "__main__":` guard and from notebooks. The caller stops its progress-bar thread around this
    call, so no other thread is running at the fork. TOKENIZERS_PARALLELISM=false in the workers keeps Hugging
    Face tokenizers from warning that the parent already used its thread pool, and keeps N workers from each
    starting a pool of their own. Elsewhere (macOS, Windows): spawn.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods and sys.platform == "linux" else "spawn")
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(str(tokenizer_dir),))
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def _encoded(corpus: Corpus, tokenizer, seed: int, dtype: str, pool,
             num_workers: int) -> Iterator[tuple[list[np.ndarray], list[tuple[float | None, bool]], int]]:
    """Encoded batches in corpus order, in this process (pool None) or in the pool's workers, with at most
    2 * workers + 2 batches in flight (Pool.imap would read the whole corpus ahead into memory)."""
    batches = _batches(corpus.documents(), corpus, seed)
    if pool is None:
        for texts, meta, nbytes in batches:
            yield encode_pieces(texts, dtype, tokenizer), meta, nbytes
        return
    inflight: collections.deque = collections.deque()
    for texts, meta, nbytes in batches:
        inflight.append((pool.submit(encode_pieces, texts, dtype), meta, nbytes))
        if len(inflight) >= 2 * num_workers + 2:
            fut, meta, nb = inflight.popleft()
            yield fut.result(), meta, nb
    while inflight:
        fut, meta, nb = inflight.popleft()
        yield fut.result(), meta, nb


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

        def docs() -> Iterator[str]:  # in pieces: the same words to count, in bounded memory
            for doc in corpus.documents():
                progress.update(task, completed=corpus.bytes_read)
                yield from cut_pieces(doc, PIECE_CHARS) if len(doc) > PIECE_CHARS else (doc,)

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

    def start(self) -> None:
        pass

    def stop(self) -> None:
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
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(_progress(progress))
            tok = build_tokenizer(tokenizer, corpus, vocab, vocab_size, bar)
            tok_dir = tmp / "tokenizer"
            tok.save(tok_dir)
            eot, vsize = int(tok.eot_id), int(tok.vocab_size)
            dtype = dtype_for_vocab(vsize)
            writers = {s: ShardWriter(tmp, s, dtype, shard_tokens, vsize) for s in ("train", "val")}
            ndocs = {"train": 0, "val": 0}
            eot_arr = np.array([eot], dtype=dtype)

            pool = None
            if workers > 1:
                bar.stop()  # no progress-bar thread alive while the workers are forked
                pool = _start_pool(workers, tok_dir)
                stack.callback(pool.shutdown, wait=True, cancel_futures=True)
                pool.submit(int).result()  # start the workers now, while no other thread runs
                bar.start()
            task = bar.add_task("tokenizing", total=corpus.total_bytes)
            # `pending` is the latest document (a list of token arrays, one per piece) and its split: it is
            # written when the next document starts, so the last one can still change split (see docstring).
            pending: tuple[list[np.ndarray], str] | None = None
            for arrays, meta, nbytes in _encoded(corpus, tok, seed, dtype.str, pool, workers):
                for ids, (u, _last) in zip(arrays, meta):
                    if u is None:  # a later piece of the current document
                        pending[0].append(ids)
                        continue
                    if pending is not None:
                        _write_doc(writers[pending[1]], pending[0], eot_arr)
                        ndocs[pending[1]] += 1
                    pending = ([ids], "val" if u < val_fraction else "train")
                bar.update(task, completed=nbytes)
            bar.update(task, completed=corpus.total_bytes)
            _check_not_empty(corpus)

            assert pending is not None
            pieces, split = pending
            if sum(ndocs.values()) == 0:  # one document: cut its tokens as nanoGPT does
                policy = "single-document"
                n = sum(len(a) for a in pieces)
                k = int(n * (1 - val_fraction))
                pos = 0
                for a in pieces:  # tokens [0, k) to train, [k, n) to val, without concatenating the pieces
                    writers["train"].write(a[:max(0, k - pos)])
                    writers["val"].write(a[max(0, k - pos):])
                    pos += len(a)
                writers["val"].write(eot_arr)
                ndocs = {"train": int(k > 0), "val": 1}
            else:
                policy = "document-hash"
                if val_fraction > 0 and ndocs["val"] == 0:
                    split = "val"
                elif ndocs["train"] == 0:
                    split = "train"
                _write_doc(writers[split], pieces, eot_arr)
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


def _write_doc(writer: ShardWriter, pieces: list[np.ndarray], eot: np.ndarray) -> None:
    for a in pieces:
        writer.write(a)
    writer.write(eot)


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _version() -> str:
    from .. import __version__

    return __version__
