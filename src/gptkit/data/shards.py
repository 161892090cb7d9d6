"""Binary token shards: a 256-byte header followed by the tokens, as llm.c does it.

Layout (all integers little-endian):

    offset  size  field
    0       8     magic            b"GPTKTOK\\0"
    8       4     format version   uint32, currently 1
    12      4     dtype code       uint32: 2 = uint16 tokens, 4 = uint32 tokens (the item size in bytes)
    16      8     token count      uint64
    24      8     vocab size       uint64 (0 when unknown); every token is < vocab size
    32      224   zero padding     up to HEADER_BYTES = 256
    256     ...   the tokens       count * itemsize bytes, nothing after them

uint16 is used whenever the vocabulary fits (vocab_size <= 65,536: char, GPT-1, GPT-2), which halves the size
on disk and the memory traffic of the loader; larger vocabularies use uint32. `open_shard` returns a read-only
`np.memmap` over the tokens after checking the magic, the version, the dtype and that the file is exactly as
long as the header says, so a truncated or corrupt shard is a one-line `DataError`, not a silent short read.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

from ..errors import GptkitError
from ..io import AtomicFile

MAGIC = b"GPTKTOK\0"
VERSION = 1
HEADER_BYTES = 256
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, dtype code, count, vocab size (32 bytes)
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}

MANIFEST = "manifest.json"
"""A prepared data directory's index of its shards and tokenizer (written by `gptkit prepare`)."""
FORMAT = "gptkit-prepared"
FORMAT_VERSION = 1


class DataError(GptkitError):
    """A problem with the user's data: a missing input, an empty corpus, a corrupt shard or data directory."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest token dtype for a vocabulary: uint16 when every id fits (vocab_size <= 65,536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


def _dtype_code(dtype: np.dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype.kind != "u" or dtype.itemsize not in _DTYPES:
        raise ValueError(f"shard tokens must be uint16 or uint32, got {dtype}")
    return dtype.itemsize


def encode_header(count: int, dtype: np.dtype, vocab_size: int = 0) -> bytes:
    """The 256-byte header for `count` tokens of `dtype`."""
    head = _HEADER.pack(MAGIC, VERSION, _dtype_code(dtype), count, vocab_size)
    return head + b"\0" * (HEADER_BYTES - len(head))


def read_header(path: str | Path) -> dict:
    """Parse and check a shard's header and size. Returns {"version", "dtype", "count", "vocab_size"}."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: shard not found") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path}: not a gptkit token shard (file is {size} bytes, shorter than the "
                        f"{HEADER_BYTES}-byte header); re-run `gptkit prepare`")
    magic, version, code, count, vocab_size = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise DataError(f"{path}: not a gptkit token shard (bad magic {magic!r}); re-run `gptkit prepare`")
    if version != VERSION:
        raise DataError(f"{path}: shard format version {version}, this gptkit reads version {VERSION}; "
                        "re-run `gptkit prepare`")
    if code not in _DTYPES:
        raise DataError(f"{path}: corrupt shard header (dtype code {code}); re-run `gptkit prepare`")
    dtype = _DTYPES[code]
    expected = HEADER_BYTES + count * dtype.itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{path}: corrupt shard, {what}: header says {count:,} tokens ({expected:,} bytes) "
                        f"but the file is {size:,} bytes; re-run `gptkit prepare`")
    return {"version": version, "dtype": dtype, "count": count, "vocab_size": vocab_size}


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int = 0) -> dict:
    """Write `tokens` (uint16 or uint32) as a shard, atomically: a temporary sibling, fsync, then os.replace.

    Returns {"file", "tokens", "bytes", "sha256"} for the manifest.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"a shard holds a 1-D array of tokens, got shape {tokens.shape}")
    header = encode_header(len(tokens), tokens.dtype, vocab_size)  # also checks the dtype is uint16/uint32
    body = np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("<")).tobytes()
    with AtomicFile(path, compress=False) as f:
        f.write(header)
        f.write(body)
    h = hashlib.sha256(header)
    h.update(body)
    return {"file": path.name, "tokens": len(tokens), "bytes": len(header) + len(body), "sha256": h.hexdigest()}


def open_shard(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """A read-only view of a shard's tokens (an `np.memmap`; an empty array for an empty shard). With `vocab_size`,
    a shard whose header records another vocabulary size is a DataError."""
    info = read_header(path)
    if vocab_size is not None and info["vocab_size"] not in (0, vocab_size):
        raise DataError(f"{path}: written for a vocabulary of {info['vocab_size']:,} ids, the manifest says "
                        f"{vocab_size:,}; re-run `gptkit prepare`")
    if info["count"] == 0:  # mmap cannot map zero bytes
        return np.empty(0, dtype=info["dtype"])
    return np.memmap(path, dtype=info["dtype"], mode="r", offset=HEADER_BYTES, shape=(info["count"],))


class ShardWriter:
    """Append tokens to a split's shards (`{prefix}_000.bin`, `{prefix}_001.bin`, ...) of at most `shard_tokens`.

    Tokens stream to an open temporary file whose header is filled in when the shard is closed, so memory stays
    bounded by the largest array passed to `write`. Every shard is renamed into place only when complete
    (gptkit.io.AtomicFile).
    """

    def __init__(self, out_dir: str | Path, prefix: str, dtype: np.dtype, shard_tokens: int, vocab_size: int = 0):
        if shard_tokens <= 0:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.out_dir, self.prefix, self.dtype = Path(out_dir), prefix, np.dtype(dtype).newbyteorder("<")
        self.shard_tokens, self.vocab_size = shard_tokens, vocab_size
        self.shards: list[dict] = []
        self.total = 0
        self._f: AtomicFile | None = None
        self._count = 0

    def _open(self) -> None:
        self._f = AtomicFile(self.out_dir / f"{self.prefix}_{len(self.shards):03d}.bin", compress=False)
        self._f.write(b"\0" * HEADER_BYTES)  # placeholder; the real header is written by _close
        self._count = 0

    def _close(self) -> None:
        assert self._f is not None
        self._f.raw.seek(0)
        self._f.write(encode_header(self._count, self.dtype, self.vocab_size))
        self._f.commit()
        path = self._f.path
        self.shards.append({"file": path.name, "tokens": self._count,
                            "bytes": HEADER_BYTES + self._count * self.dtype.itemsize,
                            "sha256": sha256_file(path)})
        self._f = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and self.vocab_size and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(tokens.max())} >= vocab size {self.vocab_size}")
        tokens = tokens.astype(self.dtype, copy=False)
        pos = 0
        while pos < len(tokens):
            if self._f is None:
                self._open()
            take = min(len(tokens) - pos, self.shard_tokens - self._count)
            self._f.write(tokens[pos:pos + take].tobytes())
            self._count += take
            self.total += take
            pos += take
            if self._count == self.shard_tokens:
                self._close()

    def close(self) -> list[dict]:
        """Finish the last shard (an empty split still gets one empty shard, so every split has `_000`)."""
        if self._f is not None:
            self._close()
        if not self.shards:
            self._open()
            self._close()
        return self.shards


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
