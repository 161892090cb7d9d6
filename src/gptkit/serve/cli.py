"""`gptkit serve`: load the model and run uvicorn (the flags are gptkit.options.serve, the shell
gptkit.commands.serve). Light at import: the command's imports are inside it."""

import os
import sys

import torch

from ..chat_template import check_stored_template
from ..checkpoint import load_model
from ..errors import CheckpointError, GptkitError
from ..generate import prepare_for_inference
from ..options.serve import ServeCommandOptions
from ..runtime import device_memory, pick_device
from .app import create_app
from .config import ServeOptions, model_name_of
from .running import bind_socket, log_requests, read_chat_template_file

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def need_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise GptkitError(f"gptkit serve needs fastapi and uvicorn ({e.name} is missing): "
                          f"pip install 'gptkit[serve]'") from None


def cache_bytes_per_value(device) -> int:
    """Bytes a KV-cache entry takes: float32 on the CPU, where decoding computes in float32 whatever the weights'
    storage; on a GPU at the least 2 (16-bit)."""
    return 4 if getattr(device, "type", device) == "cpu" else 2


def check_cache_fits(config, max_batch: int, device) -> None:
    """Refuse, in one line at start-up, a --max-batch whose KV cache (keys and values of every layer over the
    whole context, one row per request decoded at once) cannot fit the device's memory: it was allocated at the
    first request, and every request failed with a 500."""
    per_row = 2 * config.n_layer * config.block_size * config.n_embd * cache_bytes_per_value(device)
    have = device_memory(device)
    if have is not None and max_batch * per_row > have:
        raise GptkitError(f"--max-batch {max_batch:,} needs a KV cache of at least {max_batch * per_row / 2**30:,.1f} "
                          f"GiB ({per_row / 2**20:,.1f} MiB a row: {config.n_layer} layers × context "
                          f"{config.block_size} × width {config.n_embd}, keys and values), more than the "
                          f"{'GPU' if getattr(device, 'type', device) == 'cuda' else 'machine'}'s {have / 2**30:.1f} "
                          f"GiB: lower --max-batch")


def serve(args: ServeCommandOptions) -> int:

    need_serve_extra()
    if not 0 <= args.port <= 65535:
        raise GptkitError(f"--port must be in 0..65535, got {args.port}")
    for name in ("max_batch", "max_queue", "max_body_bytes", "max_connections"):
        least = 0 if name == "max_queue" else 1
        if getattr(args, name) < least:
            raise GptkitError(f"--{name.replace('_', '-')} must be {'>= 0' if least == 0 else 'positive'}, got "
                              f"{getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise GptkitError(f"--threads must be positive, got {args.threads}")
    if args.api_key is not None and not args.api_key.strip():  # it matched a request with no key at all
        raise GptkitError("--api-key must not be empty (leave it out to serve without a key)")
    args.log_level = args.log_level.lower()
    if args.log_level not in LOG_LEVELS:
        raise GptkitError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {args.log_level!r}")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    model = load_model(args.ckpt, map_location=device, tokenizer_dir=args.tokenizer_dir)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise CheckpointError(f"{args.ckpt} has no tokenizer: pass --tokenizer-dir DIR")

    check_cache_fits(model.config, args.max_batch, device)
    model = prepare_for_inference(model, args.weights, args.blas, rows=args.max_batch)  # the server only decodes
    if args.chat_template:
        tokenizer.chat_template = read_chat_template_file(args.chat_template)
    else:
        check_stored_template(tokenizer, args.ckpt)  # (a stored one may be replaced by --chat-template FILE)
    name = args.model_name or model_name_of(args.ckpt)
    api_key = args.api_key if args.api_key is not None else os.environ.get("GPTKIT_API_KEY") or None
    opts = ServeOptions(model_name=name, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                        max_body_bytes=args.max_body_bytes, ui=args.ui, docs=args.docs)
    app = create_app(model, tokenizer, opts)
    import uvicorn

    sock = bind_socket(args.host, args.port)  # bound before "serving ... on" is claimed (or warned about)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"gptkit: warning: serving on {args.host} without --api-key: anyone who can reach it may use it",
              file=sys.stderr)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"gptkit: serving {name!r} ({model.num_params / 1e6:.1f}M parameters, context "
          f"{model.config.block_size}) on http://{host}:{port}/v1", file=sys.stderr)
    with log_requests(args.log_level) as uvicorn_level:
        config = uvicorn.Config(app, host=args.host, port=port, log_level=uvicorn_level, access_log=False,
                                lifespan="on", limit_concurrency=args.max_connections, timeout_keep_alive=30)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
    return 0
