"""`gptkit chat`: a terminal conversation with a checkpoint (gptkit.chat), or one reply with --prompt."""

from __future__ import annotations

import argparse

from ..errors import CheckpointError, GptkitError
from ..options import from_args
from ..options.chat import ChatOptions
from ..options.sample import top_k_or_none
from . import add_command


def cmd_chat(args: argparse.Namespace) -> int:
    from ..chat import ChatSession, run
    from ..chat_template import check_stored_template
    from ..checkpoint import load_model
    from ..generate import GenerationError, SamplingParams, prepare_for_inference
    from ..runtime import pick_device, set_threads

    opts = from_args(ChatOptions, args)
    params = SamplingParams(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature,
                            top_k=top_k_or_none(opts.top_k), top_p=opts.top_p, seed=opts.seed)
    try:
        params.validate()
    except GenerationError as e:  # name the flag, not the field
        msg = str(e)
        for name in ("max_new_tokens", "temperature", "top_k", "top_p"):
            msg = msg.replace(name, "--" + name.replace("_", "-"))
        raise GptkitError(msg) from None
    if opts.max_new_tokens < 1:
        raise GptkitError(f"--max-new-tokens must be at least 1, got {opts.max_new_tokens}")
    device = pick_device(opts.device)
    set_threads(opts.threads)
    model = load_model(opts.ckpt, map_location=device, tokenizer_dir=opts.tokenizer_dir)
    if model.tokenizer is None:
        raise CheckpointError(f"{opts.ckpt} has no tokenizer: pass --tokenizer-dir DIR")
    check_stored_template(model.tokenizer, opts.ckpt)
    model = prepare_for_inference(model.eval(), opts.weights, opts.blas)
    return run(ChatSession(model, model.tokenizer, params, system=opts.system), prompt=opts.prompt)


def add_chat(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "chat", ChatOptions, cmd_chat, help="chat with a model in the terminal (the server's chat "
                "template; /clear, /temperature X, /quit)")
