"""Options of `gptkit info` and `gptkit export-hf`."""

from __future__ import annotations

from dataclasses import dataclass

from .generator import opt


@dataclass
class InfoOptions:
    """Parameters, FLOPs and memory of a preset (every preset without --preset)."""

    preset: str | None = opt(None, "preset name (see `gptkit info`)")
    json: bool = opt(False, "print JSON")


@dataclass
class ExportHFOptions:
    """A checkpoint written as a Hugging Face transformers directory."""

    ckpt: str = opt(None, "gptkit checkpoint or training-run directory", required=True)
    out: str = opt(None, "output directory", required=True)
