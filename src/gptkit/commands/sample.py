"""`gptkit sample`: generate text from a checkpoint, streaming to stdout (or a prompt loop with -i)."""

from __future__ import annotations

import argparse
import sys

from ..errors import CheckpointError, GptkitError
from ..options import from_args
from ..options.sample import SampleOptions, top_k_or_none
from . import add_command


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_model
    from ..generate import GenerationError, SamplingParams, iter_generations, prepare_for_inference
    from ..runtime import pick_device, set_threads

    args = from_args(SampleOptions, args)

    if args.max_new_tokens < 0 or args.num_samples <= 0:
        raise GptkitError("--max-new-tokens must be >= 0 and --num-samples > 0")
    if args.temperature < 0:
        raise GptkitError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise GptkitError(f"--top-p must be in (0, 1], got {args.top_p}")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_k=top_k_or_none(args.top_k), top_p=args.top_p,
                            presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                            stop=tuple(args.stop or ()))
    try:
        params.validate()
    except GenerationError as e:  # name the flag, not the field
        msg = str(e)
        for name in ("max_new_tokens", "temperature", "top_k", "top_p", "presence_penalty", "frequency_penalty"):
            msg = msg.replace(name, "--" + name.replace("_", "-"))
        raise GptkitError(msg.replace("stop sequences", "--stop")) from None
    device = pick_device(args.device)
    set_threads(args.threads)
    model = load_model(args.ckpt, map_location=device, tokenizer_dir=args.tokenizer_dir)
    tok = model.tokenizer
    if tok is None:
        raise CheckpointError(f"{args.ckpt} has no tokenizer: pass --tokenizer-dir DIR")
    model.eval()
    model = prepare_for_inference(model, args.weights, args.blas)
    gen = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None

    def sample(prompt: str | None) -> None:
        if prompt is None or prompt == "":
            if tok.eot_id is None:
                raise GptkitError("this tokenizer has no <|endoftext|> token: give a --prompt")
            ids = [tok.eot_id]
        else:
            ids = tok.encode(prompt)
        if not ids:
            raise GptkitError("the prompt encodes to no tokens")
        for i in range(args.num_samples):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---", flush=True)
            sys.stdout.write(prompt or "")
            for ev in iter_generations(model, [ids], params, tokenizer=tok, generator=gen):
                sys.stdout.write(ev.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()

    if not args.interactive:
        sample(args.prompt)
        return 0
    # a prompt loop: Ctrl-C stops the current sample, Ctrl-D (end of input) or an empty line twice quits
    print(f"gptkit sample: {args.ckpt}. Type a prompt and press Enter; Ctrl-C stops a sample, Ctrl-D quits.",
          file=sys.stderr)
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not prompt.strip():
            continue
        try:
            sample(prompt)
        except KeyboardInterrupt:
            print("\n(stopped)", file=sys.stderr)
        except GptkitError as e:
            print(f"gptkit: error: {e}", file=sys.stderr)


def add_sample(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "sample", SampleOptions, cmd_sample, help="generate text from a checkpoint, streaming to stdout")
