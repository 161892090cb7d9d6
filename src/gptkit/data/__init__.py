"""Data: `prepare` (text -> token shards), the shard format, input sources, and the training batch loader.

The loader needs torch and is imported on first use, so `gptkit prepare` and the shard helpers stay light.
"""

from .prepare import prepare
from .shards import DataError, ShardWriter, dtype_for_vocab, open_shard, read_header, write_shard
from .sources import Corpus, input_kind, is_text_file

_LOADER = ("TokenDataset", "BatchLoader", "get_batch", "eval_batches", "batch_offsets", "read_manifest",
           "load_tokenizer", "data_fingerprint")


def __getattr__(name: str):
    if name in _LOADER:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'gptkit.data' has no attribute {name!r}")


__all__ = ["prepare", "DataError", "ShardWriter", "dtype_for_vocab", "open_shard", "read_header", "write_shard",
           "Corpus", "input_kind", "is_text_file", *_LOADER]
