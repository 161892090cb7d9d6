"""Batches for pre-training from a `gptkit prepare` directory, resumable exactly without saving data state.

A batch is `B` windows of `T + 1` consecutive tokens at random offsets of a split's token stream (all its shards
end to end, memory-mapped, so nothing is loaded up front); `x` is the first T tokens of each window and `y` the
last T, the next-token targets — nanoGPT's `get_batch`. The offsets are a pure function of
`(seed, split, step, micro_step, rank)`: they come from `np.random.default_rng([seed, split, step, micro_step,
rank])`. So

- resuming at step N draws exactly the batches an uninterrupted run draws at step N; a checkpoint needs no data
  state beyond the step (the small `state_dict()` records the seed and shapes, to catch a resume on other data);
- every rank of a distributed run draws different windows (rank is part of the key), with no coordination;
- eval batches use their own fixed seed (`EVAL_SEED`, independent of the training seed), so val losses of
  different runs on the same data are measured on the same windows and are comparable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..io import json_type, parse_json
from ..tokenizer import Tokenizer
from .shards import FORMAT, FORMAT_VERSION, MANIFEST, DataError, dtype_for_vocab, open_shard, sha256_file

SPLIT_CODES = {"train": 0, "val": 1}
EVAL_SEED = 20_240_601  # fixed: eval windows do not depend on the training seed
STATE_VERSION = 1
FULL_CHECK_TOKENS = 1 << 24
"""A split of at most this many tokens (32 MiB of uint16, a few ms) has every token id checked when it is opened;
a larger one has the ids of each batch checked as it is drawn (`TokenDataset.windows`)."""


def read_manifest(data_dir: str | Path) -> dict:
    """The manifest of a prepared data directory (DataError when `data_dir` is not one)."""

    path = Path(data_dir) / MANIFEST
    if Path(data_dir).is_file():
        raise DataError(f"{data_dir} is a file; --data takes the directory `gptkit prepare --out` wrote")
    if not Path(data_dir).is_dir():
        raise DataError(f"data directory not found: {data_dir} (create it with `gptkit prepare`)")
    try:
        manifest = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{data_dir} is not a prepared data directory (no {MANIFEST}; create it with "
                        "`gptkit prepare`)") from None
    except ValueError as e:
        raise DataError(f"{path}: corrupt manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a gptkit prepare manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: data format version {manifest.get('format_version')}, this gptkit reads "
                        f"version {FORMAT_VERSION}; re-run `gptkit prepare`")
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"{path}: corrupt manifest ({problem}); re-run `gptkit prepare`")
    return manifest


def _field(obj: dict, key: str, where: str, kind: type, low: int | None = None):
    """`obj[key]`, or the message saying why the field `where` is missing or of the wrong type/range (a str)."""
    if key not in obj:
        return None, f"`{where}` is missing"
    v = obj[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        return None, f"`{where}` is {json_type(v)}, expected a whole number"
    if kind is not int and not isinstance(v, kind):
        return None, f"`{where}` is {json_type(v)}, expected {json_type(kind())}"
    if low is not None and v < low:
        return None, f"`{where}` is {v}, expected at least {low}"
    if kind is str and not v:
        return None, f"`{where}` is empty"
    return v, None


def _manifest_problem(m: dict) -> str | None:
    """What is wrong with the structure of a manifest's fields that readers use (None when nothing is): a JSON
    file that parses but was edited or written by something else must be a one-line error naming the field."""
    tok, why = _field(m, "tokenizer", "tokenizer", dict)
    if why:
        return why
    for key, kind, low in (("kind", str, None), ("dir", str, None), ("vocab_size", int, 1), ("eot_id", int, 0)):
        _, why = _field(tok, key, f"tokenizer.{key}", kind, low)
        if why:
            return why
    if tok["eot_id"] >= tok["vocab_size"]:
        return f"`tokenizer.eot_id` {tok['eot_id']} is not below `tokenizer.vocab_size` {tok['vocab_size']}"
    dtype, why = _field(m, "dtype", "dtype", str)
    expected = dtype_for_vocab(tok["vocab_size"]).name
    if why or dtype != expected:
        return why or f"`dtype` is {dtype!r}, expected {expected!r} for a vocabulary of {tok['vocab_size']:,} ids"
    splits, why = _field(m, "splits", "splits", dict)
    if why:
        return why
    for split in SPLIT_CODES:
        where = f"splits.{split}"
        sp, why = _field(splits, split, where, dict)
        tokens, why = (None, why) if why else _field(sp, "tokens", f"{where}.tokens", int, 0)
        shards, why = (None, why) if why else _field(sp, "shards", f"{where}.shards", list)
        if why:
            return why
        for i, shard in enumerate(shards):
            at = f"{where}.shards[{i}]"
            if not isinstance(shard, dict):
                return f"`{at}` is {json_type(shard)}, expected an object"
            for key, kind, low in (("file", str, None), ("tokens", int, 0), ("sha256", str, None)):
                _, why = _field(shard, key, f"{at}.{key}", kind, low)
                if why:
                    return why
            if Path(shard["file"]).name != shard["file"] or shard["file"] in (".", ".."):
                return f"`{at}.file` {shard['file']!r} is not a file name in the data directory"
        if tokens != sum(s["tokens"] for s in shards):
            return f"`{where}.tokens` {tokens:,} is not the sum of its shards' tokens"
    return None


def load_tokenizer(data_dir: str | Path):
    """The tokenizer a prepared data directory was made with."""

    want = read_manifest(data_dir)["tokenizer"]
    where = Path(data_dir) / want["dir"]
    tok = Tokenizer.from_pretrained(where)
    if tok.vocab_size != want["vocab_size"] or tok.eot_id != want["eot_id"]:  # ids the shards hold would not fit
        raise DataError(f"{where}: the tokenizer has {tok.vocab_size:,} ids (end-of-text {tok.eot_id}) but "
                        f"manifest.json says {want['vocab_size']:,} (end-of-text {want['eot_id']}); re-run "
                        "`gptkit prepare`")
    return tok


def data_fingerprint(data_dir: str | Path) -> str:
    """A short id of a prepared dataset's content (its shard checksums and tokenizer), from the manifest."""
    m = read_manifest(data_dir)
    h = hashlib.sha256(json.dumps([m["tokenizer"]["kind"], m["tokenizer"]["vocab_size"], m["dtype"]]).encode())
    for split in ("train", "val"):
        for s in m["splits"][split]["shards"]:
            h.update(s["sha256"].encode())
    return h.hexdigest()[:16]


class TokenDataset:
    """One split of a prepared directory as a single token sequence over its memory-mapped shards.

    `len(ds)` tokens; `ds[a:b]` a numpy copy of a range (it may span shards); `ds.windows(starts, n)` the
    (len(starts), n) array of the n tokens at each start, gathered with one fancy index per shard.

    A token id at or above the vocabulary size (a corrupt shard) is a DataError naming the shard, found when the
    split is opened if it is small (FULL_CHECK_TOKENS), else when a window holding it is drawn: the model would
    fail deep inside its embedding. (The shards' sha256 is checked only with `verify`: reading every byte of a
    large dataset on each run would make opening it slow.)
    """

    def __init__(self, data_dir: str | Path, split: str = "train", verify: bool = False):
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.data_dir, self.split = Path(data_dir), split
        self.manifest = m = read_manifest(data_dir)
        self.vocab_size = int(m["tokenizer"]["vocab_size"])
        self.eot_id = int(m["tokenizer"]["eot_id"])
        self.shards: list[np.ndarray] = []
        self.paths: list[Path] = []
        for s in m["splits"][split]["shards"]:
            path = self.data_dir / s["file"]
            arr = open_shard(path, self.vocab_size)
            if len(arr) != s["tokens"]:
                raise DataError(f"{path}: holds {len(arr):,} tokens, the manifest says {s['tokens']:,}; "
                                "re-run `gptkit prepare`")
            if verify and sha256_file(path) != s["sha256"]:
                raise DataError(f"{path}: sha256 differs from the manifest; the shard is corrupt")
            self.shards.append(arr)
            self.paths.append(path)
        self.lengths = np.array([len(a) for a in self.shards], dtype=np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)  # shard i: [b[i], b[i+1])
        self.dtype = self.shards[0].dtype if self.shards else np.dtype(np.uint16)
        self.ids_checked = len(self) <= FULL_CHECK_TOKENS  # then every id is checked here, once, not per batch
        if self.ids_checked:
            for i, arr in enumerate(self.shards):
                if len(arr) and (top := int(arr.max())) >= self.vocab_size:
                    raise self._bad_id(i, top)

    def _bad_id(self, shard: int, token: int) -> DataError:
        return DataError(f"{self.paths[shard]}: token id {token:,} is not below the vocabulary size "
                         f"{self.vocab_size:,} of {self.data_dir}; the shard is corrupt: re-run `gptkit prepare`")

    def _check_ids(self, starts: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """`windows` (drawn at `starts`), checked to hold only ids below the vocabulary size (a cheap max) unless
        the whole split was checked when it was opened."""
        if not self.ids_checked and windows.size and int(windows.max()) >= self.vocab_size:
            row, col = np.argwhere(windows >= self.vocab_size)[0]
            shard = int(np.searchsorted(self.bounds, starts[row] + col, side="right")) - 1
            raise self._bad_id(shard, int(windows[row, col]))
        return windows

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            i = int(key) + (len(self) if int(key) < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(key)
            s = int(np.searchsorted(self.bounds, i, side="right")) - 1
            return self.shards[s][i - self.bounds[s]]
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("TokenDataset slices must be contiguous")
        parts = []
        for s, arr in enumerate(self.shards):
            lo, hi = max(start, self.bounds[s]), min(stop, self.bounds[s + 1])
            if lo < hi:
                parts.append(arr[lo - self.bounds[s]:hi - self.bounds[s]])
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(len(starts), length) tokens; window i is ds[starts[i] : starts[i] + length]."""
        starts = np.asarray(starts, dtype=np.int64)
        if len(starts) and (starts.min() < 0 or starts.max() + length > len(self)):
            raise IndexError("window out of range")
        ar = np.arange(length, dtype=np.int64)
        if len(self.shards) == 1:
            return self._check_ids(starts, np.asarray(self.shards[0][starts[:, None] + ar]))
        out = np.empty((len(starts), length), dtype=self.dtype)
        sid = np.searchsorted(self.bounds, starts, side="right") - 1
        local = starts - self.bounds[sid]
        inside = local + length <= self.lengths[sid]
        for s in np.unique(sid[inside]):
            rows = np.nonzero(inside & (sid == s))[0]
            out[rows] = self.shards[s][local[rows, None] + ar]
        for r in np.nonzero(~inside)[0]:  # rare: a window across a shard boundary
            out[r] = self[int(starts[r]):int(starts[r]) + length]
        return self._check_ids(starts, out)


def batch_offsets(num_tokens: int, batch_size: int, block_size: int, seed: int, step: int, micro_step: int = 0,
                  rank: int = 0, split: str = "train") -> np.ndarray:
    """The window starts of one batch: a pure function of its arguments (see the module docstring)."""
    if num_tokens < block_size + 1:
        raise DataError(f"the {split} split has {num_tokens:,} tokens, fewer than block_size + 1 = "
                        f"{block_size + 1}; use a smaller --block-size or more data")
    for name, v in (("seed", seed), ("step", step), ("micro_step", micro_step), ("rank", rank)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], step, micro_step, rank])
    return rng.integers(0, num_tokens - block_size, size=batch_size, dtype=np.int64)


def _to_xy(w: np.ndarray, device: str | torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.from_numpy(w.astype(np.int64))
    x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
    if device is not None and torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    if device is not None:
        return x.to(device), y.to(device)
    return x, y


def get_batch(dataset: TokenDataset, batch_size: int, block_size: int, *, seed: int, step: int,
              micro_step: int = 0, rank: int = 0, device: str | torch.device | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 tensors of shape (batch_size, block_size); y[:, t] = x[:, t + 1] within each window."""
    starts = batch_offsets(len(dataset), batch_size, block_size, seed, step, micro_step, rank, dataset.split)
    return _to_xy(dataset.windows(starts, block_size + 1), device)


def eval_batches(dataset: TokenDataset, num_batches: int, batch_size: int, block_size: int,
                 seed: int = EVAL_SEED, rank: int = 0, device: str | torch.device | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same `num_batches` batches on every call and every run (fixed seed): comparable eval losses."""
    for i in range(num_batches):
        yield get_batch(dataset, batch_size, block_size, seed=seed, step=i, rank=rank, device=device)


class BatchLoader:
    """Training and eval batches of a prepared directory for one rank.

    >>> loader = BatchLoader("data/shakespeare_char", batch_size=12, block_size=64, seed=1337)
    >>> x, y = loader.get_batch("train", step=it, micro_step=k)  # the same (x, y) on every resume
    >>> for x, y in loader.eval_batches("val", 200): ...
    """

    def __init__(self, data_dir: str | Path, batch_size: int, block_size: int, seed: int = 1337, rank: int = 0,
                 world_size: int = 1, device: str | torch.device | None = None, eval_seed: int = EVAL_SEED):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if batch_size <= 0 or block_size <= 0:
            raise ValueError("batch_size and block_size must be positive")
        self.data_dir = Path(data_dir)
        self.batch_size, self.block_size = batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device, self.eval_seed = device, eval_seed
        self.manifest = read_manifest(data_dir)
        self._datasets: dict[str, TokenDataset] = {}
        self._ahead: dict[tuple[str, int], tuple[int, list]] = {}  # (split, micro_step) → (first step, batches)
        self._last: dict[tuple[str, int], int] = {}  # (split, micro_step) → the step asked for last

    def dataset(self, split: str) -> TokenDataset:
        if split not in self._datasets:
            self._datasets[split] = TokenDataset(self.data_dir, split)
        return self._datasets[split]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    AHEAD_STEPS, AHEAD_TOKENS = 64, 1 << 20
    """Steps whose batches a sequential reader gets drawn at once (at most AHEAD_TOKENS tokens of them)."""

    def get_batch(self, split: str, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `micro_step` of optimizer step `step`: (x, y), each (batch_size, block_size) int64.

        The same pure function of the step as `get_batch`; when steps are asked for in order (a training loop),
        the next AHEAD_STEPS are drawn together, back to back: between a training loop's steps, with its caches
        full of the model, drawing one batch took ~0.3 ms where it takes 0.04 ms in a loop of draws (nanoGPT's
        recipe shape on a 2-core Xeon, 2% of a step)."""
        key = (split, micro_step)
        first, batches = self._ahead.get(key, (0, []))
        if not first <= step < first + len(batches):
            sequential = self._last.get(key) == step - 1
            n = max(1, min(self.AHEAD_STEPS, self.AHEAD_TOKENS // (self.batch_size * (self.block_size + 1))))
            first, batches = step, self._draw(split, range(step, step + (n if sequential else 1)), micro_step)
            self._ahead[key] = (first, batches)
        self._last[key] = step
        return batches[step - first]

    def _draw(self, split: str, steps: range, micro_step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `steps`, gathered from the token stream at once and cut into (x, y) per step."""
        ds = self.dataset(split)
        starts = np.concatenate([batch_offsets(len(ds), self.batch_size, self.block_size, self.seed, s, micro_step,
                                               self.rank, split) for s in steps])
        x, y = _to_xy(ds.windows(starts, self.block_size + 1), self.device)
        return list(zip(x.split(self.batch_size), y.split(self.batch_size)))

    def eval_batches(self, split: str, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(self.dataset(split), num_batches, self.batch_size, self.block_size,
                            seed=self.eval_seed, rank=self.rank, device=self.device)

    def eval_batch(self, split: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `i` of `eval_batches(split, n)` (for n > i), on its own: ranks can share the eval batches out."""
        return get_batch(self.dataset(split), self.batch_size, self.block_size, seed=self.eval_seed, step=i,
                         rank=self.rank, device=self.device)

    def state_dict(self) -> dict:
        """All the loader needs to reproduce its batches (the step comes from the trainer)."""
        return {"version": STATE_VERSION, "seed": self.seed, "eval_seed": self.eval_seed,
                "batch_size": self.batch_size, "block_size": self.block_size, "rank": self.rank,
                "world_size": self.world_size, "data": data_fingerprint(self.data_dir)}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Adopt a saved seed; with `strict`, refuse a state saved on other data."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data loader state version {state.get('version')}, expected {STATE_VERSION}")
        if strict and state.get("data") != data_fingerprint(self.data_dir):
            raise DataError(f"{self.data_dir} is not the data this run was trained on (its fingerprint "
                            f"{data_fingerprint(self.data_dir)} differs from the checkpoint's {state.get('data')})")
        self.seed, self.eval_seed = int(state["seed"]), int(state["eval_seed"])
        self._ahead.clear()  # drawn with the seed before
