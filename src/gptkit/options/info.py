"""Options of `gptkit info` and `gptkit export-hf`."""

from __future__ import annotations

from dataclasses import dataclass

from . import common
from .generator import opt


@dataclass
class InfoOptions:
    """Parameters, FLOPs and memory of a preset (every preset without --preset), or of a checkpoint."""

    preset: str | None = opt(None, "preset name (see `gptkit info`); with --ckpt, the preset to compare with")
    ckpt: str | None = common.ckpt("a checkpoint, a training run (its latest checkpoint) or a Hugging Face directory: "
                                   "its shape, and where it differs from its preset (--preset, else the "
                                   "run's own, else one of the same shape)", required=False)
    json: bool = opt(False, "print JSON")


@dataclass
class ExportHFOptions:
    """A checkpoint written as a Hugging Face transformers directory."""

    ckpt: str = common.ckpt("what is read: a gptkit checkpoint or a training run (its latest checkpoint)")
    out: str = common.out_dir("where the Hugging Face model goes")
