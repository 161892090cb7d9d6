"""gptkit: the GPT family (GPT-1, GPT-2, GPT-3) end to end."""

__version__ = "0.1.0"

from .config import PRESETS, GPTConfig  # noqa: E402
from .errors import CheckpointError, GptkitError  # noqa: E402


def __getattr__(name: str):
    # Keep `import gptkit` light (the CLI starts fast): torch-backed classes load on first use.
    if name in ("GPT", "GPTBackbone"):
        from . import model

        return getattr(model, name)
    if name == "Tokenizer":
        from .tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'gptkit' has no attribute {name!r}")


__all__ = ["GPT", "GPTBackbone", "GPTConfig", "PRESETS", "Tokenizer", "GptkitError", "CheckpointError"]
