"""Options of `gptkit serve` (the server's own settings, built from them, are gptkit.serve.config.ServeOptions)."""

from __future__ import annotations

from dataclasses import dataclass

from ..serve.config import DEFAULT_HOST, DEFAULT_PORT
from .generator import opt
from .sample import blas, weights


@dataclass
class ServeCommandOptions:
    """Serve a model over HTTP with an OpenAI-compatible API."""

    ckpt: str = opt(None, "checkpoint, training run, or Hugging Face directory", required=True)
    host: str = opt(DEFAULT_HOST, "address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    port: int = opt(DEFAULT_PORT, "port to listen on (0: any free port)")
    api_key: str | None = opt(None, "require 'Authorization: Bearer KEY' (default: $GPTKIT_API_KEY, else no key)")
    model_name: str | None = opt(None, "the model id clients send (default: the directory name)")
    tokenizer: str | None = opt(None, "tokenizer directory, when the checkpoint has none")
    max_batch: int = opt(16, "generations decoded together")
    max_queue: int = opt(64, "generations waiting for a free row before 429")
    max_body_bytes: int = opt(1 << 20, "larger request bodies get 413")
    max_connections: int = opt(256, "open connections before 503")
    threads: int | None = opt(None, "torch threads (default: torch's choice)")
    weights: str = weights()
    blas: str = blas()
    device: str = opt("auto", "cpu, cuda or auto")
    log_level: str = opt("warning", "uvicorn log level")
