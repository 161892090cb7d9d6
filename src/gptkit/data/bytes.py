"""Bits per byte: a loss in nats per token turned into bits per byte of the original text.

Losses measured with different tokenizers (characters, a BPE of 8k ids, GPT-2's 50k) are per *different* units;
per byte of the text they describe they are comparable (the convention of GPT-2 §3.1 and of Kaplan et al. 2020 when
they compare across data sets):
    bits/byte = loss_nats_per_token × tokens / (bytes × ln 2)

`tokens / bytes` is measured on the validation split of a prepared directory: its tokens are decoded document by
document (the split is `doc <|endoftext|> doc <|endoftext|> ...`, so no character is cut between two decodes) and
the UTF-8 bytes of the text counted. An end-of-text token counts as a token (the model is scored on predicting it)
but as no bytes (it is not part of the text). GPT-1's tokenizer decodes lossily (lower case, no accents), so its
ratio is approximate: `exact` is False then.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .loader import TokenDataset, load_tokenizer, read_manifest
from .shards import DataError


def val_bytes_per_token(data_dir: str | Path) -> dict:
    """{"tokens", "bytes", "bytes_per_token", "exact"} of the validation split of `data_dir`."""

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    tokens = TokenDataset(data_dir, "val")[:]
    if len(tokens) == 0:
        raise DataError(f"{data_dir} has no validation tokens: bits per byte is measured on the val split")
    tok = load_tokenizer(data_dir)
    eot = int(manifest["tokenizer"]["eot_id"])
    ends = np.flatnonzero(tokens == eot)
    n_bytes, start = 0, 0
    for end in [*ends.tolist(), len(tokens)]:
        if end > start:
            n_bytes += len(tok.decode(tokens[start:end].tolist()).encode("utf-8"))
        start = end + 1
    if n_bytes == 0:
        raise DataError(f"the val split of {data_dir} decodes to no text")
    return {"tokens": int(len(tokens)), "bytes": int(n_bytes), "bytes_per_token": n_bytes / len(tokens),
            "exact": manifest["tokenizer"]["kind"] != "gpt1"}


def bits_per_byte(loss: float, data_dir: str | Path) -> float:
    """A validation loss in nats per token of `data_dir`'s tokenizer, as bits per byte of its val text."""
    return loss / (val_bytes_per_token(data_dir)["bytes_per_token"] * math.log(2))
