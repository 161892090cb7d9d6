"""`gptkit` command line: thin shells over the library's functions.

Each subcommand parses its flags and calls one function; the heavy modules (torch, transformers) are imported
only by the subcommand that needs them, so `gptkit --help` and `gptkit info` start fast. A user mistake (a
GptkitError or a missing file) prints one line, `gptkit: error: ...`, and exits with status 2; a bug still
shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
from typing import Callable

from . import __version__
from .errors import GptkitError, Terminated

Handler = Callable[[argparse.Namespace], int | None]


# ------------------------------------------------------------------------------------------------ info
def _fmt_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def info_record(name: str) -> dict:
    from .config import GPTConfig

    c = GPTConfig.from_preset(name)
    return {
        "preset": name, "params": c.num_params, "non_embedding_params": c.non_embedding_params,
        "flops_per_token": c.flops_per_token(), "context": c.block_size, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_embd": c.n_embd, "head_size": c.head_size, "vocab_size": c.vocab_size,
        "norm": c.norm, "attention": c.attention, "pos": c.pos,
        "weights_bytes_fp32": 4 * c.num_params, "weights_bytes_bf16": 2 * c.num_params,
    }


def cmd_info(args: argparse.Namespace) -> int:
    from .config import PRESETS

    if args.preset is None:
        rows = [info_record(n) for n in PRESETS]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"gptkit {__version__} presets")
        for col in ("preset", "params", "non-emb", "layers×heads×width", "context", "norm", "attention",
                    "train GFLOP/token"):
            table.add_column(col, justify="left" if col in ("preset", "norm", "attention") else "right")
        for r in rows:
            table.add_row(r["preset"], _fmt_count(r["params"]), _fmt_count(r["non_embedding_params"]),
                          f"{r['n_layer']}×{r['n_head']}×{r['n_embd']}", str(r["context"]), r["norm"],
                          r["attention"], f"{r['flops_per_token'] / 1e9:.2f}")
        console = Console()
        # Never truncate names or numbers: off a terminal rich assumes 80 columns, too narrow for this table.
        console.width = max(console.width, Console(width=10_000).measure(table).maximum)
        console.print(table)
        return 0
    r = info_record(args.preset)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"preset              {r['preset']}")
    print(f"parameters          {r['params']:,} ({_fmt_count(r['params'])})")
    print(f"non-embedding       {r['non_embedding_params']:,}")
    print(f"train FLOPs/token   {r['flops_per_token']:,} (6N + 12·L·d·T at T={r['context']})")
    print(f"weights             {r['weights_bytes_fp32'] / 2**30:.2f} GiB fp32, "
          f"{r['weights_bytes_bf16'] / 2**30:.2f} GiB bf16")
    print(f"shape               {r['n_layer']} layers × {r['n_head']} heads × {r['n_embd']} wide "
          f"(head size {r['head_size']}), context {r['context']}, vocab {r['vocab_size']:,}")
    print(f"architecture        {r['norm']}-LN, {r['attention']} attention, {r['pos']} positions")
    return 0


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, FLOPs and memory of a preset (all presets without --preset)")
    p.add_argument("--preset", help="preset name (see `gptkit info`)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


# ------------------------------------------------------------------------------------------- export-hf
def cmd_export_hf(args: argparse.Namespace) -> int:
    from .interop.hf import export_checkpoint

    out = export_checkpoint(args.ckpt, args.out)
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def add_export_hf(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-hf", help="write a checkpoint as a Hugging Face transformers directory")
    p.add_argument("--ckpt", required=True, help="gptkit checkpoint or training-run directory")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_export_hf)


# ---------------------------------------------------------------------------------------------- sample
def stream_text(tokenizer, token_iter, ids_so_far: list[int]):
    """Yield printable text pieces as token ids arrive. Byte-level BPE tokens can split a UTF-8 character,
    so text is held back while the decoded tail is an incomplete character (see generate.Detokenizer)."""
    from .generate import Detokenizer

    detok = Detokenizer(tokenizer, ids_so_far)
    for tok in token_iter:
        ids_so_far.append(tok)
        piece = detok.push(tok)
        if piece:
            yield piece
    tail = detok.flush()
    if tail:
        yield tail


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_model
    from .errors import CheckpointError
    from .generate import GenerationError, SamplingParams, iter_generations, prepare_for_inference
    from .train import pick_device

    if args.max_new_tokens < 0 or args.num_samples <= 0:
        raise GptkitError("--max-new-tokens must be >= 0 and --num-samples > 0")
    if args.temperature < 0:
        raise GptkitError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise GptkitError(f"--top-p must be in (0, 1], got {args.top_p}")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k if args.top_k and args.top_k > 0 else None, top_p=args.top_p,
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
    model = load_model(args.ckpt, map_location=device)
    tok = model.tokenizer
    if tok is None:
        raise CheckpointError(f"{args.ckpt} has no tokenizer; cannot turn --prompt into tokens")
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
    p = sub.add_parser("sample", help="generate text from a checkpoint, streaming to stdout")
    p.add_argument("--ckpt", required=True, help="checkpoint, training run, or Hugging Face directory")
    p.add_argument("--prompt", default=None, help="text to continue (default: start from <|endoftext|>)")
    p.add_argument("--interactive", "-i", action="store_true", help="read prompts from the terminal, one a line")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--presence-penalty", type=float, default=0.0, help="-2..2, OpenAI's definition")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="-2..2, OpenAI's definition")
    p.add_argument("--stop", action="append", default=None, help="stop at this text (repeatable)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    p.add_argument("--weights", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="fp16/int8: faster on CPU, slightly different output (see docs/benchmarks.md)")
    p.add_argument("--blas", choices=["numpy", "torch"], default="numpy",
                   help="fp32 on CPU: multiply through numpy's BLAS (OpenBLAS; default) or PyTorch's own (MKL)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.set_defaults(func=cmd_sample)


def add_train(sub: argparse._SubParsersAction) -> None:
    from .train import add_train as add

    add(sub)


def add_quickstart(sub: argparse._SubParsersAction) -> None:
    from .quickstart import add_quickstart as add

    add(sub)


def add_prepare(sub: argparse._SubParsersAction) -> None:
    from .data.cli import add_prepare as add

    add(sub)


def add_serve(sub: argparse._SubParsersAction) -> None:
    from .serve import add_serve as add  # fastapi/uvicorn load only when `serve` runs

    add(sub)


def add_data(sub: argparse._SubParsersAction) -> None:
    from .data.pipeline_cli import add_data as add

    add(sub)


def add_finetune(sub: argparse._SubParsersAction) -> None:
    from .finetune.cli import add_finetune as add_ft, add_predict

    add_ft(sub)
    add_predict(sub)


def add_eval(sub: argparse._SubParsersAction) -> None:
    from .evaluate.cli import add_eval as add

    add(sub)


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptkit", description="The GPT family end to end: pre-train, "
                                     "fine-tune, evaluate, sample, serve.")
    parser.add_argument("--version", action="version", version=f"gptkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [add_quickstart, add_info, add_prepare, add_data, add_train, add_sample, add_export_hf, add_finetune, add_eval, add_serve]


USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EROFS,
               errno.ENAMETOOLONG, errno.EDQUOT, errno.ELOOP}
"""OSErrors that come from what the user pointed gptkit at (a path, a full disk), not from a bug: one line."""


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that re-launch themselves
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    # So that `kill` / `timeout` clean up as Ctrl-C does (only possible from the main thread). Not in a process
    # torchrun started: its agent stops the processes with SIGTERM and, where one sits in a collective that a
    # Python handler cannot interrupt, would wait for its SIGKILL deadline; a resume removes what they left.
    previous = None
    if "RANK" not in os.environ:
        try:
            previous = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:
            pass
    launched = "RANK" in os.environ and bool(os.environ.get("GPTKIT_LAUNCHER"))  # `--nproc`: the launcher reports
    try:
        return int(args.func(args) or 0)
    except GptkitError as e:
        print(f"gptkit: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"gptkit: error: {e.filename or e}: no such file or directory", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gptkit ... | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""  # e.g. "out/x: permission denied"
        print(f"gptkit: error: {where}{(e.strerror or str(e)).lower()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        if not launched:
            print(f"gptkit: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

if __name__ == "__main__":
    sys.exit(main())
