"""Options of `gptkit serve` (the server's own settings, built from them, are gptkit.serve.config.ServeOptions)."""

from __future__ import annotations

from dataclasses import dataclass

from ..serve.config import DEFAULT_HOST, DEFAULT_PORT
from . import common
from .generator import opt
from .sample import blas, weights


@dataclass
class ServeCommandOptions:
    """Serve a model over HTTP: OpenAI-compatible completions and chat, a playground page."""

    ckpt: str = common.ckpt()
    host: str = opt(DEFAULT_HOST, "address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    port: int = opt(DEFAULT_PORT, "port to listen on (0: any free port)")
    api_key: str | None = opt(None, "require 'Authorization: Bearer KEY' (default: $GPTKIT_API_KEY, else no key)")
    model_name: str | None = opt(None, "the model id clients send (default: the run's folder name, e.g. "
                                 "shakespeare for runs/shakespeare)")
    tokenizer_dir: str | None = common.tokenizer_dir()
    max_batch: int = opt(16, "generations decoded together")
    max_queue: int = opt(64, "generations waiting for a free row before 429")
    max_body_bytes: int = opt(1 << 20, "larger request bodies get 413")
    max_connections: int = opt(256, "open connections before 503")
    threads: int | None = common.threads()
    weights: str = weights()
    blas: str = blas()
    device: str = common.device()
    log_level: str = opt("info", "info: one line per request; warning or above: none (uvicorn's own messages "
                         "show at debug and trace)")
    ui: bool = opt(True, "serve the playground page at /")
    docs: bool = opt(True, "serve the API reference at /docs and its schema at /openapi.json")
    chat_template: str | None = opt(None, "a Jinja chat template (Hugging Face's convention) for "
                                    "/v1/chat/completions, instead of the tokenizer's own or the plain transcript",
                                    metavar="FILE")
