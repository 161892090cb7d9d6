"""What `gptkit serve` is told besides the model: limits, key, name. Light (no fastapi), so the CLI can build it."""

import os
import re
from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
CHECK_S = 0.5
"""How often a non-streamed request looks whether its client is still there (seconds)."""


@dataclass
class ServeOptions:
    """What `gptkit serve` is told besides the model."""

    model_name: str = "gptkit"
    api_key: str | None = None
    """When set, /v1/* requests need `Authorization: Bearer <api_key>`."""
    max_batch: int = 16
    """Generations decoded together (rows of the KV cache)."""
    max_queue: int = 64
    """Generations that may wait for a row; more → 429."""
    max_body_bytes: int = 1 << 20
    max_n: int = 16
    """Most generations (n × prompts) one request may ask for."""
    max_prefill_tokens: int = 2048
    """Prompt tokens prefilled in one step (bounds how long running streams pause for newcomers)."""
    ui: bool = True
    """Serve the playground page at GET /."""
    docs: bool = True
    """Serve /openapi.json and an API reference at /docs."""


GENERIC_NAMES = {"run", "model", "ckpt", "checkpoint", "checkpoints", "out", "output", "hf", "latest", "best",
                 "final", "pretrained"}
"""Directory names that say nothing about the model: the model id is taken from the folder above them."""


def model_name_of(ckpt: str) -> str:
    """A readable model id for a checkpoint path: its run's folder name (runs/shakespeare → "shakespeare",
    runs/x/checkpoints/step-00000500 → "x", runs/quickstart/run → "quickstart")."""
    parts = [p for p in os.path.abspath(ckpt).split(os.sep) if p]
    if len(parts) >= 2 and re.fullmatch(r"step-\d+", parts[-1]) and parts[-2] == "checkpoints":
        parts = parts[:-2]
    while len(parts) >= 2 and parts[-1].lower() in GENERIC_NAMES:
        parts.pop()
    return parts[-1] if parts else "gptkit"
