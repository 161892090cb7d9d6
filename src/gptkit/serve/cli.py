"""`gptkit serve`: its flags, and the command that loads the model and runs uvicorn. Light at import (the
command's imports are inside it), so `gptkit --help` stays fast."""

import argparse
import os
import sys

from ..errors import GptkitError
from .config import DEFAULT_HOST, DEFAULT_PORT, ServeOptions

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def need_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise GptkitError(f"gptkit serve needs fastapi and uvicorn ({e.name} is missing): "
                          f"pip install 'gptkit[serve]'") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_model
    from ..errors import CheckpointError
    from .app import create_app
    from .running import bind_socket

    need_serve_extra()
    if not 0 <= args.port <= 65535:
        raise GptkitError(f"--port must be in 0..65535, got {args.port}")
    for name in ("max_batch", "max_queue", "max_body_bytes", "max_connections"):
        if getattr(args, name) < (0 if name == "max_queue" else 1):
            raise GptkitError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise GptkitError(f"--threads must be positive, got {args.threads}")
    args.log_level = args.log_level.lower()
    if args.log_level not in LOG_LEVELS:
        raise GptkitError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {args.log_level!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..train import pick_device

    device = pick_device(args.device)
    model = load_model(args.ckpt, map_location=device)
    tokenizer = model.tokenizer
    if args.tokenizer:
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    if tokenizer is None:
        raise CheckpointError(f"{args.ckpt} has no tokenizer: pass --tokenizer DIR")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                              f"{model.config.vocab_size}")
    from ..generate import prepare_for_inference

    model = prepare_for_inference(model, args.weights, args.blas)  # the server only decodes
    name = args.model_name or os.path.basename(os.path.normpath(args.ckpt))
    api_key = args.api_key if args.api_key is not None else os.environ.get("GPTKIT_API_KEY") or None
    opts = ServeOptions(model_name=name, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                        max_body_bytes=args.max_body_bytes)
    app = create_app(model, tokenizer, opts)
    import uvicorn

    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"gptkit: warning: serving on {args.host} without --api-key: anyone who can reach it may use it",
              file=sys.stderr)
    sock = bind_socket(args.host, args.port)  # bound before "serving ... on" is claimed
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"gptkit: serving {name!r} ({model.num_params / 1e6:.1f}M parameters, context "
          f"{model.config.block_size}) on http://{host}:{port}/v1", file=sys.stderr)
    config = uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level, lifespan="on",
                            limit_concurrency=args.max_connections, timeout_keep_alive=30)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP with an OpenAI-compatible completions API")
    p.add_argument("--ckpt", required=True, help="checkpoint, training run, or Hugging Face directory")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine "
                   "only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: "
                   "$GPTKIT_API_KEY, else no key)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the directory name)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory, when the checkpoint has none")
    p.add_argument("--max-batch", type=int, default=16, help="generations decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="generations waiting for a free row before 429")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--max-connections", type=int, default=256, help="open connections before 503")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--weights", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="fp16/int8: faster on CPU, slightly different output (see docs/benchmarks.md)")
    p.add_argument("--blas", choices=["numpy", "torch"], default="numpy",
                   help="fp32 on CPU: multiply through numpy's BLAS (OpenBLAS; default) or PyTorch's own (MKL)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    p.set_defaults(func=cmd_serve)
