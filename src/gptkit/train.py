"""Generative pre-training: maximise Σ log P(u_i | u_<i) over a corpus (GPT-1 §3.1).

`train(cfg)` runs the loop: AdamW with decay / no-decay groups, linear warmup then cosine decay to min_lr,
gradient accumulation and clipping, bf16 autocast on GPU, periodic evaluation, and checkpoints that resume
*exactly*: a run stopped at any moment (even by `kill -9`) and resumed with `--resume` ends with the same
losses and bitwise the same weights on CPU as one that never stopped. That holds because everything random
is a function of saved state: the batches are a pure function of (seed, step, micro-step, rank), and the
torch RNG states (dropout) are saved with the optimizer.

`train()` is a short sequence of named phases: set up the runtime (`setup_runtime`), take the run directory's
lock (`hold_run_dir`), decide between resuming and starting (`resume_or_start`), build or restore the model
(`build_or_restore_model`), open the data, place the model on its devices (`place_model`), restore the optimizer
and RNG state (`restore_state`), then `run_steps`: `Trainer.step`, `Trainer.evaluate`, `Trainer.checkpoint` and
the `--max-minutes` `TimeBudget`. What the loop carries is a `TrainState`.

Run layout:

    RUN/train_config.json          the resolved TrainConfig (defaults < --config file < command line)
    RUN/metrics.jsonl              one JSON line per logged step: step, train_loss, lr, elapsed_s, [val_loss]
    RUN/checkpoints/step-N/        gptkit checkpoint + trainer_state.pt (optimizer, RNG, step, data position);
                                   a sharded run (--checkpoint-format sharded) keeps weights and optimizer in
                                   shards/, one file per process (see gptkit.distributed)
    RUN/loss.png                   the loss curves, drawn at the end
    RUN/.gptkit.lock               while a run writes here: its process id, under an OS lock (gptkit.runlock)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from . import autotune, cpu_attention, lm_loss
from . import distributed as D
from .checkpoint import (
    SHARDS_DIR,
    check_shards,
    checkpoint_config,
    checkpoint_tokenizer,
    is_sharded,
    list_checkpoints,
    load_model,
    read_config_json,
    read_trainer_state,
    shard_manifest,
    write_config_files,
    write_model_files,
)
from .config import GPTConfig
from .data.loader import BatchLoader, load_tokenizer
from .data.sources import is_prepared_dir
from .errors import MachineTooSmall, TrainError
from .io import atomic_path, atomic_write_text, new_tmp_dir, parse_json, publish_dir
from .model import GPT, meta_model
from .optim import adamw, cosine, optimizer_step, set_lr, warmup_cosine
from .options.train import TrainConfig, check_types, load_yaml_config  # noqa: F401 (re-exported)
from .runlock import RunLocked, run_lock
from .runtime import (Progress, autocast, device_memory, gpu_peak_flops, keep_freed_memory, pick_device, pick_dtype,
                      set_threads)
from .threadguard import ThreadGuard

RESUME_OVERRIDABLE = ("device", "quiet", "threads", "max_iters", "log_interval", "eval_interval", "save_interval",
                      "keep_last", "sample_every", "compile", "parallel", "nproc", "activation_checkpointing",
                      "grad_accum", "attention_backend", "checkpoint_format")


# ------------------------------------------------------------------------------------------ schedule
def lr_at(step: int, cfg: TrainConfig) -> float:
    """The run's learning rate at `step`: warmup, then cosine decay to min_lr (gptkit.optim.warmup_cosine).
    After a --max-minutes re-plan at step s0 (cfg.replanned_at), the cosine goes on from the progress p0 it had
    reached there to its end at the new lr_decay_iters: the rate stays continuous and still ends at min_lr.
    (Between warmup and s0 the rate followed earlier plans: metrics.jsonl has the rate of every logged step.)"""
    if cfg.replanned_at is None or step < cfg.replanned_at[0]:
        return warmup_cosine(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
    return cosine(cosine_progress(step, cfg), cfg.lr, cfg.min_lr)


def cosine_progress(step: int, cfg: TrainConfig) -> float:
    """How far along its cosine (0: its start, 1: min_lr) the run's schedule is at `step`."""
    if cfg.replanned_at is not None and step >= cfg.replanned_at[0]:
        s0, p0 = cfg.replanned_at
        return min(1.0, p0 + (1 - p0) * (step - s0) / max(1, cfg.lr_decay_iters - s0))
    return min(1.0, max(0.0, (step - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)))


TIME_BUDGET_FIRST_STEPS = 5
"""Steps not counted when measuring speed for --max-minutes (allocator and kernel warm-up)."""


def time_budget_step(cfg: TrainConfig) -> int:
    """The step at which --max-minutes fixes the run's length: the end of warmup (the learning rate up to there
    does not depend on max_iters), but at least a few steps past the warm-up ones."""
    return max(cfg.warmup_iters, TIME_BUDGET_FIRST_STEPS + 10)


def steps_in_budget(cfg: TrainConfig, step: int, elapsed_s: float, s_per_step: float, n_splits: int) -> int:
    """Total steps that end a run near cfg.max_minutes, given where it is now and its measured speed. Periodic
    evaluation is budgeted too: an eval batch is a forward pass, about a third of a training step."""
    eval_share = n_splits * cfg.eval_iters / 3 / (cfg.eval_interval * cfg.grad_accum)
    left = max(0.0, cfg.max_minutes * 60 - elapsed_s)
    return step + int(left / (s_per_step * (1 + eval_share)))


# ------------------------------------------------------------------------------------------- dtype
def _train_step_workloads(config: GPTConfig, batch_size: int) -> dict[str, Any]:
    """One forward and backward pass at the run's shape, in float32 and under bf16 autocast, on a throwaway
    model of at most two of its blocks (the ratio is the blocks' and the head's; a deep model would cost minutes
    and its memory twice). The global RNG is left as it was: the run's weights and dropout do not depend on it."""
    with torch.random.fork_rng(devices=[]):
        model = GPT(dataclasses.replace(config, n_layer=min(config.n_layer, 2)))
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(config.vocab_size, (batch_size, config.block_size), generator=gen)

    def run(dtype):
        def once():
            with autocast("cpu", dtype):
                loss = model(x, targets=x)
            loss.backward()
            model.zero_grad(set_to_none=True)
        return once

    return {"float32": run(torch.float32), "bfloat16": run(torch.bfloat16)}


TRAIN_DTYPE_MIN_GAIN = 0.15
"""bf16 autocast is taken only when the measured pass is at least this much faster. The measurement (forward and
backward of a two-block copy) tracks whole steps well where bf16 clearly wins (6 × 384: 1.68× measured, 1.51× in
training) but not within a few percent: at nanoGPT's recipe shape, before gptkit.cpu_attention, it measured bf16
3-10% faster while whole training steps were 1.3× slower in bf16 (docs/benchmarks.md). float32 is also the
exact, simpler path."""


TRAIN_PATHS = "bf16 attention and loss chosen per shape"
"""Part of the decision's key, with the paths `choose_bf16_paths` chose: what the bf16 candidate runs. Changed
whenever a path changes speed (gptkit.cpu_attention, gptkit.lm_loss), so that decisions remembered from before
are measured again instead of trusted."""


def choose_bf16_paths(config: GPTConfig, batch_size: int, known: dict | None = None) -> dict[str, str | None]:
    """How this shape's bf16 steps compute attention and the loss on the CPU, each measured once per CPU and
    shape and remembered (gptkit.cpu_attention.choose_path, gptkit.lm_loss.choose_path): the compiled pieces
    where they clearly win, else plain PyTorch, and then no compiler at all (inductor's import and compile cost a
    process 2-3 s on two cores). `known`: the choices a resumed run made, taken as they are (runs saved before
    the loss's choice had three ways called it "softmax"). With attention dropout SDPA runs its own (no choice
    to make)."""
    known = known or {}
    attention = None if config.attn_pdrop > 0 else cpu_attention.choose_path(
        batch_size, config.n_head, config.block_size, config.head_size, known=known.get("attention"))
    return {"attention": attention,
            "loss": lm_loss.choose_path(batch_size * config.block_size, config.n_embd, config.vocab_size,
                                        known=known.get("loss", known.get("softmax")))}


def cpu_train_dtype(config: GPTConfig, batch_size: int) -> str:
    """--dtype auto on a CPU: "bfloat16" autocast where the CPU has native bf16 units (AMX, AVX512-BF16) and a
    training step at this shape, on the bf16 paths chosen for it, was measured clearly faster with it
    (TRAIN_DTYPE_MIN_GAIN), else "float32" (gptkit.autotune: measured once per CPU, shape, thread count and
    torch version, then remembered)."""
    if not autotune.has_native_bf16():
        return "float32"
    paths = choose_bf16_paths(config, batch_size)
    shape = {"n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
             "block_size": config.block_size, "vocab": config.vocab_size, "batch": batch_size,
             "threads": torch.get_num_threads(), "paths": f"{TRAIN_PATHS}: {paths['attention']} attention, "
                                                           f"{paths['loss']} loss"}
    return autotune.choose("train autocast", shape, ("float32", "bfloat16"),
                           lambda: _train_step_workloads(config, batch_size), rounds=autotune.TRAINING_ROUNDS,
                           min_gain=TRAIN_DTYPE_MIN_GAIN,
                           describe=lambda d: f"training computes in {d} on this CPU (--dtype {d})")


def settle_dtype(cfg: TrainConfig, rt: Runtime, config: GPTConfig, resumed: bool) -> None:
    """The run's autocast dtype. `--dtype auto` is resolved once, when the run starts, and the name is written
    into its settings (train_config.json, every checkpoint), so a resume computes in the same dtype. On a CPU
    it is measured (cpu_train_dtype), except under torchrun, where the processes share the cores and must
    agree: there, and for runs saved as "auto" before this was decided, float32. A bf16 run on one CPU process
    also settles its attention and loss paths (choose_bf16_paths), recorded likewise."""
    if cfg.dtype == "auto" and not resumed:
        if rt.device.type == "cpu" and not rt.info.enabled:
            cfg.dtype = cpu_train_dtype(config, cfg.batch_size)
        else:
            cfg.dtype = str(pick_dtype("auto", rt.device)).removeprefix("torch.")
    rt.dtype = pick_dtype(cfg.dtype, rt.device)
    if rt.dtype == torch.bfloat16 and rt.device.type == "cpu" and not rt.info.enabled:
        cfg.bf16_paths = choose_bf16_paths(config, cfg.batch_size, cfg.bf16_paths if resumed else None)


# ------------------------------------------------------------------------------------- checkpoints
TRAINER_STATE = "trainer_state.pt"


def rng_state(device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def save_checkpoint(run_dir: Path, step: int, model, model_sd: dict | None, optim_sd: dict | None, tokenizer,
                    cfg: TrainConfig, trainer: dict[str, Any], tmp: Path | None = None) -> Path:
    """Write RUN/checkpoints/step-N atomically: a complete gptkit checkpoint plus trainer_state.pt (every rank's
    RNG state, step, best val, data-loader state, and, in the full format, the name-keyed full optimizer state).
    Sharded: `tmp` already holds shards/ (written by every rank), and this adds the rest and publishes it."""

    final = step_dir(run_dir, step)
    extra = {"train": dataclasses.asdict(cfg), "step": step}
    tmp = new_tmp_dir(final) if tmp is None else tmp
    try:
        if model_sd is None:  # sharded
            write_config_files(tmp, model.config, tokenizer, {**extra, "shards": shard_manifest(tmp)})
            torch.save(trainer, tmp / TRAINER_STATE)
        else:
            write_model_files(tmp, model, tokenizer, extra=extra, state_dict=model_sd)
            torch.save({"optimizer": optim_sd, **trainer}, tmp / TRAINER_STATE)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def prune_checkpoints(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    ckpts = list_checkpoints(run_dir)
    for p in ckpts[:-keep_last]:
        if best_step is None or p.name != f"step-{best_step:08d}":
            shutil.rmtree(p, ignore_errors=True)


def clean_stale_tmp(run_dir: Path) -> None:
    """Remove half-written checkpoint directories left by a run that was killed while saving."""
    root = run_dir / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps > `step` (logged by a run after its last checkpoint, then killed)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # a bad line is dropped below
        try:
            if parse_json(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill -9 mid-write

    atomic_write_text(path, "".join(line + "\n" for line in keep))


def plot_losses(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    tr = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    va = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if tr:
        ax.plot(*zip(*tr), label="train (logged step)", lw=1, alpha=0.7)
    if va:
        ax.plot(*zip(*va), "o-", label="val", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()

    try:
        with atomic_path(out_png, ".tmp.png") as tmp:  # ".png" lets matplotlib infer the format
            fig.savefig(tmp)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------ the run
def resolve_run(cfg: TrainConfig) -> tuple[TrainConfig, Path | None]:
    """The settings the run goes on with, and the checkpoint it resumes from (None for a fresh run)."""

    run_dir = Path(cfg.out)
    if is_prepared_dir(run_dir):  # a later `prepare --out` there would replace the run with data
        raise TrainError(f"--out {run_dir} is a `gptkit prepare` output (it holds manifest.json): choose another "
                         f"directory for the run")
    if not cfg.resume:
        if list_checkpoints(run_dir):
            raise TrainError(f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose a new "
                             f"--out")
        return cfg.resolved(), None
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise TrainError(f"--resume: {run_dir} has no checkpoint to resume from")
    resume_from = ckpts[-1]
    try:
        saved_cfg = TrainConfig(**read_config_json(resume_from)["train"])
    except (KeyError, TypeError) as e:
        raise TrainError(f"--resume: {resume_from} was not written by `gptkit train` ({type(e).__name__}: {e})") \
            from None
    check_types(dataclasses.asdict(saved_cfg), f"--resume: {resume_from / 'config.json'}: train.")
    # The run continues with its own settings. Only these may be changed on resume, and only when given
    # explicitly (a flag or the config file; all of them when train() is called from Python): where and how
    # fast it runs, how long, and grad_accum, so that a run saved by N processes keeps its global batch on M.
    explicit = getattr(cfg, "explicit", None)
    fixed = sorted(n for n in (explicit or ()) if n not in RESUME_OVERRIDABLE + ("data", "out", "resume")
                   and getattr(cfg, n) != getattr(saved_cfg, n) and not settled_by_the_run(n, cfg, saved_cfg))
    if fixed:
        raise TrainError(f"--resume continues {resume_from.parent.parent} with its own settings; "
                         + ", ".join(f"--{n.replace('_', '-')} ({getattr(saved_cfg, n)} there)" for n in fixed)
                         + " cannot change (start a new run, e.g. with --init-from, to change them)")
    for name in RESUME_OVERRIDABLE:
        if name == "max_iters" and saved_cfg.max_minutes is not None:
            continue  # a time budget's run keeps the length it planned (its cosine and re-plans are fitted to it)
        if explicit is None or name in explicit:
            setattr(saved_cfg, name, getattr(cfg, name))
    saved_cfg.resume, saved_cfg.out, saved_cfg.data = True, cfg.out, cfg.data
    saved_cfg.validate()  # the saved settings too (a hand-edited config.json)
    return saved_cfg.resolved(), resume_from


def settled_by_the_run(name: str, asked: TrainConfig, saved: TrainConfig) -> bool:
    """Whether the saved value of `name` is one the run settled itself from what the same command asks, so that
    running the command again with --resume is not a change: `--dtype auto` (saved as what it chose), and under
    `--max-minutes` the cosine's length (`--lr-decay-iters`, re-planned with the run's length)."""
    if name == "dtype":
        return asked.dtype == "auto"
    return name == "lr_decay_iters" and saved.max_minutes is not None


def check_backend(cfg: TrainConfig, device) -> None:
    if cfg.attention_backend == "flex" and device.type != "cuda":
        raise TrainError(f"--attention-backend flex needs a CUDA device (torch's flex_attention has no backward on "
                         f"{device.type}): use auto or sdpa")


def preflight(cfg: TrainConfig, nproc: int) -> None:
    """Find the mistakes every one of `nproc` processes would make before torchrun starts them, so that the
    user reads one line instead of N copies and a launcher's traceback."""

    cfg.validate()
    load_tokenizer(Path(cfg.data))
    device = pick_device(cfg.device)
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise TrainError(f"--nproc {nproc} needs a GPU per process, but {torch.cuda.device_count()} are visible")
    cfg, _ = resolve_run(cfg)
    check_backend(cfg, device)


def build_model_config(cfg: TrainConfig, vocab_size: int):
    base = GPTConfig.from_preset(cfg.preset)
    over: dict[str, Any] = {"vocab_size": vocab_size}
    for name in ("n_layer", "n_head", "n_embd", "block_size", "bias"):
        if getattr(cfg, name) is not None:
            over[name] = getattr(cfg, name)
    if cfg.dropout is not None:
        over.update(embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, resid_pdrop=cfg.dropout)
    return dataclasses.replace(base, **over)


# ------------------------------------------------------------------------------------ run state
@dataclass
class TrainState:
    """What a run carries from step to step. It is saved as plain entries of trainer_state.pt's dict (beside the
    optimizer, RNG and data-loader states), the layout checkpoints have always had, so every one of them resumes."""

    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    tokens: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainState:
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    def note_val(self, val: float | None, step: int) -> None:
        if val is not None and (self.best_val is None or val < self.best_val):
            self.best_val, self.best_step = val, step


@dataclass
class Runtime:
    """Where a run happens: its process group, device, autocast dtype, parallel mode, data and run directory."""

    info: Any  # gptkit.distributed.DistInfo
    device: Any  # torch.device
    dtype: Any  # torch.dtype of autocast (float32: off)
    mode: str  # none | ddp | fsdp
    run_dir: Path
    data_dir: Path
    tokenizer: Any


@dataclass
class Built:
    """A model built or restored, and what the rest of the set-up needs to know about how."""

    model: Any
    saved: dict[str, Any] | None = None  # the trainer_state.pt of the checkpoint resumed from
    init_sd: dict[str, Any] | None = None  # a fresh FSDP run: rank 0's initial weights, broadcast once sharded
    sharded: bool = False  # resumed from a sharded checkpoint: weights arrive with the optimizer state


# ------------------------------------------------------------------------------ phase: the runtime
def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Check the options, read the data's tokenizer, join the process group, pick device, threads and dtype."""

    cfg.validate()
    tokenizer = load_tokenizer(Path(cfg.data))  # DataError when it is not a `gptkit prepare` output
    device = pick_device(cfg.device)
    info = D.init(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    mode = cfg.parallel if cfg.parallel != "auto" else ("ddp" if info.enabled else "none")
    if mode != "none" and not info.enabled:
        mode = "none"  # one process: nothing to parallelise
    set_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()
    return Runtime(info, device, pick_dtype(cfg.dtype, device), mode, Path(cfg.out), Path(cfg.data), tokenizer)


def resume_or_start(cfg: TrainConfig, rt: Runtime) -> tuple[TrainConfig, Path | None]:
    """The settings the run goes on with and the checkpoint it resumes from (None: a fresh run)."""

    if cfg.resume:
        if rt.info.is_main:
            clean_stale_tmp(rt.run_dir)
        D.barrier(rt.info)
    cfg, resume_from = resolve_run(cfg)
    check_backend(cfg, rt.device)
    return cfg, resume_from


# --------------------------------------------------------------------- phase: build or restore the model
def build_or_restore_model(cfg: TrainConfig, rt: Runtime, resume_from: Path | None) -> Built:
    """The model, five ways: restored from a full or a sharded checkpoint (--resume), the weights of another
    checkpoint (--init-from), or fresh: built whole, or under FSDP on the meta device with rank 0's init."""

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if resume_from is not None:
        built = restore_model(rt, resume_from)
    elif cfg.init_from:
        built = Built(init_from(cfg, rt))
    elif rt.mode == "fsdp":  # only rank 0 builds the whole model (on CPU); the others get its weights in shards
        mc = build_model_config(cfg, rt.tokenizer.vocab_size)
        init_sd = GPT(mc).state_dict() if rt.info.is_main else {}  # the same init as one process would make
        built = Built(meta_model(mc), init_sd=init_sd)
    else:
        mc = build_model_config(cfg, rt.tokenizer.vocab_size)
        if rt.device.type == "cpu":
            check_memory(cfg, mc, rt.info.world_size)
        built = Built(GPT(mc).to(rt.device))
    built.model.tokenizer = rt.tokenizer
    built.model.set_attention_backend(cfg.attention_backend)  # auto: flex_attention for banded layers on CUDA
    return built


def memory_floor(cfg: TrainConfig, mc: GPTConfig) -> int:
    """Bytes a training step needs at the least: weights, gradients and AdamW's two moments (16 bytes a parameter),
    the micro-batch's token ids, and the activations the backward pass certainly keeps, per token: in each layer
    12 values (the LayerNorm inputs, q, k, v, the attention and MLP outputs; Korthikanti et al. 2022 count 17 with
    attention probabilities not materialised), or with --activation-checkpointing each layer's input and one
    layer's 12 recomputed; 4 bytes a value in float32, 2 where autocast may compute in 16 bits (--dtype auto too)."""
    tokens = cfg.batch_size * mc.block_size
    value = 4 if cfg.dtype == "float32" else 2
    kept = mc.n_layer + 12 if cfg.activation_checkpointing else 12 * mc.n_layer
    return 16 * mc.num_params + 16 * tokens + value * kept * tokens * mc.n_embd


def check_memory(cfg: TrainConfig, mc: GPTConfig, processes: int) -> None:
    """Refuse, in one line, a model or batch that cannot fit this machine's memory even at the least it needs:
    the kernel would kill the process part way (its allocations each fit, all of them do not), with no word."""
    ram = device_memory("cpu")
    if ram is None:  # nothing to compare with
        return
    need = memory_floor(cfg, mc) * processes
    if need > ram:
        each = f" in each of {processes} processes" if processes > 1 else ""
        also = "" if cfg.activation_checkpointing else ", or --activation-checkpointing"
        raise MachineTooSmall(f"this run needs at least {need / 2**30:,.1f} GiB of memory ({mc.num_params:,} "
                              f"parameters with their gradients and AdamW state, activations of {cfg.batch_size:,} × "
                              f"{mc.block_size:,} tokens{each}), more than this machine's {ram / 2**30:.1f} GiB: use a "
                              f"smaller --batch-size, --block-size or model{also}")


def restore_model(rt: Runtime, resume_from: Path) -> Built:
    """The checkpoint's model (a sharded one: built without storage, each rank reads its own slices once the
    model is sharded) and its trainer_state.pt."""

    sharded = is_sharded(resume_from)
    if sharded:
        check_shards(resume_from, read_config_json(resume_from))
        model = meta_model(checkpoint_config(resume_from))
        model.tokenizer = checkpoint_tokenizer(resume_from)
    else:
        model = load_model(resume_from, map_location=rt.device)
    saved_tok, tok = model.tokenizer, rt.tokenizer
    if saved_tok is None or saved_tok.vocab_size != tok.vocab_size or saved_tok.kind != tok.kind:
        raise TrainError(f"the checkpoint's tokenizer does not match {rt.data_dir}'s "
                         f"({getattr(saved_tok, 'kind', None)}/{getattr(saved_tok, 'vocab_size', None)} vs "
                         f"{tok.kind}/{tok.vocab_size})")
    return Built(model, saved=read_trainer_state(resume_from / TRAINER_STATE), sharded=sharded)


def init_from(cfg: TrainConfig, rt: Runtime):
    """--init-from: another checkpoint's weights, whose shape the model flags may not change."""

    model = load_model(cfg.init_from, map_location=rt.device)
    mc, asked = model.config, build_model_config(cfg, rt.tokenizer.vocab_size)
    changed = [n for n in ("n_layer", "n_head", "n_embd", "block_size", "bias") if getattr(cfg, n) is not None
               and getattr(asked, n) != getattr(mc, n)]
    pdrops = ("embd_pdrop", "attn_pdrop", "resid_pdrop")
    if cfg.dropout is not None and any(getattr(asked, n) != getattr(mc, n) for n in pdrops):
        changed.append("dropout")
    if changed:
        raise TrainError(f"--init-from {cfg.init_from}: the model's shape comes from the checkpoint; "
                         + ", ".join(f"--{n.replace('_', '-')}" for n in changed) + " cannot change it")
    if model.tokenizer is not None and model.tokenizer.vocab_size != rt.tokenizer.vocab_size:
        raise TrainError(f"--init-from {cfg.init_from}: its tokenizer ({model.tokenizer.vocab_size} ids) "
                         f"does not match {rt.data_dir}'s ({rt.tokenizer.vocab_size})")
    return model


def open_data(cfg: TrainConfig, rt: Runtime, block_size: int):
    """The batch loader and the splits that have tokens (train must)."""

    loader = BatchLoader(rt.data_dir, cfg.batch_size, block_size, seed=cfg.seed, device=rt.device)
    splits = [s for s in ("train", "val") if len(loader.dataset(s)) > 0]
    for split in splits:
        if len(loader.dataset(split)) < block_size + 1:
            raise TrainError(f"the {split} split of {rt.data_dir} has {len(loader.dataset(split))} tokens, fewer "
                             f"than the context ({block_size}) + 1: use more text or a smaller --block-size")
    if "train" not in splits:
        raise TrainError(f"{rt.data_dir} has no training tokens")
    return loader, splits


def place_model(cfg: TrainConfig, rt: Runtime, built: Built):
    """Activation checkpointing, the parallel wrapper (DDP, or FSDP2 shards), storage for a meta-built model
    (uninitialised: shards or rank 0's broadcast fill it); returns the model the loop calls."""

    model = built.model
    if cfg.activation_checkpointing:
        D.checkpoint_blocks(model)

    def materialize() -> None:
        model.to_empty(device=rt.device)
        model.reset_buffers_and_ties()

    if built.sharded and rt.mode != "fsdp":
        materialize()
    wrapped = model if rt.mode == "none" else \
        D.parallelize(model, rt.mode, rt.device, rt.dtype if rt.dtype != torch.float32 else None)
    if model.transformer.wte.weight.is_meta:  # after sharding: each rank allocates only its own shards
        materialize()
    if built.init_sd is not None:
        D.load_full_from_rank0(model, built.init_sd)
        built.init_sd = None
    return wrapped


# --------------------------------------------------------------- phase: restore optimizer and RNG state
def restore_state(cfg: TrainConfig, rt: Runtime, built: Built, optimizer, loader, resume_from: Path | None
                  ) -> TrainState:
    """Put the optimizer, the RNG streams and the data loader where the checkpoint left them (a fresh run: give
    each rank its own dropout stream); the run's step, best val and token count."""

    info, saved = rt.info, built.saved
    if saved is None:
        if info.rank > 0:
            torch.manual_seed(cfg.seed + 7919 * info.rank)  # each rank its own dropout masks
        return TrainState()
    try:
        if built.sharded:
            D.load_sharded(resume_from / SHARDS_DIR, built.model, optimizer)  # weights and optimizer, resharded
        else:
            D.load_optimizer_state(built.model, optimizer, saved["optimizer"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise TrainError(f"{resume_from / TRAINER_STATE}: the optimizer state does not fit this model "
                         f"({type(e).__name__}: {e})") from None
    rngs = saved["rng"]
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank], rt.device)
    elif info.is_main:
        set_rng_state(rngs[0], rt.device)
    else:  # saved by another number of processes: the other ranks' dropout streams restart from their seeds
        torch.manual_seed(cfg.seed + 7919 * info.rank)
    loader.load_state_dict(saved["loader"])  # refuses a resume on other data
    return TrainState.from_saved(saved)


def open_run_dir(rt: Runtime, resumed: bool, step: int) -> Path:
    """Rank 0 makes the run directory and drops metric lines past the checkpoint resumed from (logged before a
    kill); returns metrics.jsonl's path. The resolved options are written after the first step (save_settings)."""

    metrics_path = rt.run_dir / "metrics.jsonl"
    if rt.info.is_main:
        rt.run_dir.mkdir(parents=True, exist_ok=True)
        if resumed:
            truncate_metrics(metrics_path, step)
        else:
            metrics_path.unlink(missing_ok=True)
    return metrics_path


def save_settings(cfg: TrainConfig, rt: Runtime) -> None:
    """train_config.json: the run's resolved options. Written once its first step has trained (and again at each
    re-plan of a time budget), so that a command that fails before (a setting the machine cannot take, a bad
    file) leaves the settings of the run it would have continued as they were."""
    if rt.info.is_main:
        atomic_write_text(rt.run_dir / "train_config.json", json.dumps(dataclasses.asdict(cfg), indent=2))


# --------------------------------------------------------------------- phases: step, evaluate, checkpoint
EVAL_TOKENS_PER_FORWARD = 16_384
"""Tokens of evaluation batches stacked into one forward pass: fewer, larger products. A split of nanoGPT's
recipe (20 batches of 12 × 64, all in one pass) evaluated in 80-127 ms instead of 162-169 on two cores, 6 × 384
(8 × 256, 5 a pass) in 1.91-1.94 s instead of 2.24-2.51 (docs/benchmarks.md)."""


class Trainer:
    """One model's training pieces: an optimizer step, an evaluation, a checkpoint."""

    def __init__(self, cfg: TrainConfig, rt: Runtime, model, wrapped, optimizer, loader, splits: list[str]):
        self.cfg, self.rt, self.model, self.wrapped = cfg, rt, model, wrapped
        self.optimizer, self.loader, self.splits = optimizer, loader, splits
        self.fwd_model = torch.compile(wrapped) if cfg.compile else wrapped
        self.autocast = autocast(rt.device, rt.dtype)
        self.ckpt_format = cfg.checkpoint_format if cfg.checkpoint_format != "auto" else \
            ("sharded" if rt.mode == "fsdp" else "full")
        mcfg = model.config
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * mcfg.block_size * rt.info.world_size
        self.flops_per_token = mcfg.flops_per_token(mcfg.block_size)
        self.t_start = time.perf_counter()

    def loss(self, x, y):
        with self.autocast:  # the model's loss: under autocast fused with its output projection (gptkit.lm_loss)
            return self.fwd_model(x, targets=y)

    def step(self, step: int):
        """One optimizer step over grad_accum micro-batches per rank; returns (lr, summed loss tensor)."""

        cfg, info = self.cfg, self.rt.info
        lr = lr_at(step, cfg)
        set_lr(self.optimizer, lr)
        loss_sum = torch.zeros((), device=self.rt.device)
        for micro in range(cfg.grad_accum):
            x, y = self.loader.get_batch("train", step, info.rank * cfg.grad_accum + micro)
            with D.no_grad_sync(self.wrapped, self.rt.mode, sync=micro == cfg.grad_accum - 1):
                loss = self.loss(x, y) / cfg.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        optimizer_step(self.model, self.optimizer, cfg.grad_clip)
        return lr, loss_sum

    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters fixed batches of each split. They are shared out: rank r takes batches
        r, r + N, ...; every rank runs the same number of forward passes (FSDP needs all ranks in each), a rank
        short of one repeats a batch at weight 0. One process stacks its batches into forward passes of
        `eval_group` batches (the same mean: the batches are of one size)."""

        info, n, device = self.rt.info, self.cfg.eval_iters, self.rt.device
        mine = list(range(info.rank, -(-n // info.world_size) * info.world_size, info.world_size))
        group = self.eval_group()
        self.wrapped.eval()
        out = {}
        with torch.no_grad():
            for split in self.splits:
                total = torch.zeros(2, device=device)  # (sum of batch losses, batches)
                for s in range(0, len(mine), group):
                    batches = [self.loader.eval_batch(split, min(i, n - 1)) for i in mine[s:s + group]]
                    loss, k = self.loss(*(torch.cat(parts) for parts in zip(*batches))), len(batches)
                    if mine[s] < n:  # a group of more than one batch holds no repeated one (eval_group)
                        total += torch.stack([loss.detach() * k, torch.full((), float(k), device=device)])
                total = D.all_reduce_mean(total, info) * info.world_size
                out[split] = (total[0] / total[1]).item()
        self.wrapped.train()
        return out

    def eval_group(self) -> int:
        """Evaluation batches per forward pass: as many as fit EVAL_TOKENS_PER_FORWARD, a divisor of eval_iters
        (one shape); 1 under torchrun (a rank's last batch may be a repeat) and with --compile (no new shape)."""
        cfg = self.cfg
        if self.rt.info.world_size > 1 or cfg.compile:
            return 1
        fits = max(1, EVAL_TOKENS_PER_FORWARD // (cfg.batch_size * self.model.config.block_size))
        return max(g for g in range(1, min(fits, cfg.eval_iters) + 1) if cfg.eval_iters % g == 0)

    def checkpoint(self, step: int, state: TrainState) -> None:
        """Save RUN/checkpoints/step-N (every rank takes part), then prune old ones."""

        info, run_dir = self.rt.info, self.rt.run_dir
        rngs = D.all_gather_objects(rng_state(self.rt.device), info)
        tmp = None
        if self.ckpt_format == "sharded":  # every rank writes its shards into rank 0's temporary directory
            tmp = Path(D.all_gather_objects(str(new_tmp_dir(step_dir(run_dir, step))) if info.is_main else None,
                                            info)[0])
            try:
                D.save_sharded(tmp / SHARDS_DIR, self.model, self.optimizer)
            except BaseException:
                if info.is_main:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
            D.barrier(info)
            model_sd = optim_sd = None
        else:
            model_sd, optim_sd = D.full_state_dicts(self.model, self.optimizer)  # collective under FSDP
        if info.is_main:
            state.step, state.elapsed_s = step, time.perf_counter() - self.t_start
            saved = {**dataclasses.asdict(state), "rng": rngs, "loader": self.loader.state_dict(),
                     "world_size": info.world_size, "checkpoint_format": self.ckpt_format}
            save_checkpoint(run_dir, step, self.model, model_sd, optim_sd, self.rt.tokenizer, self.cfg, saved,
                            tmp=tmp)
            prune_checkpoints(run_dir, self.cfg.keep_last, state.best_step)
        D.barrier(info)


# ----------------------------------------------------------------------------- phase: the time budget
class TimeBudget:
    """--max-minutes: the steps after the first few are timed up to time_budget_step(cfg); there the run's
    length (max_iters, and the cosine's when it follows max_iters) is set from the measured speed. Then, at each
    evaluation, it is re-planned from the speed since the last plan (evaluations included), and between
    evaluations `watch` shortens it as soon as the steps have slowed enough to overrun, so that a machine whose
    load changes still ends the run on time."""

    REPLAN_MIN_CHANGE = 0.01
    """A re-plan that moves the end by less than this share of the run keeps the plan."""

    WATCHED_STEPS = 9
    """`watch` judges the plan on at least this many steps since the last plan (one slow step alone moves nothing)."""

    WATCHED_SHARE = 0.02
    """... and at least this share of the budget's seconds: a machine whose steps vary widely is judged on their
    mean over a few seconds (under another job, steps of one run took 0.05-0.7 s)."""

    OVERRUN = 0.04
    """`watch` re-plans when finishing at the speed since the last plan would overrun the budget by more than this.
    At 2% over 1% of the budget, a quiet 5-minute run re-planned back and forth every few hundred steps (the
    watch's short windows against the evaluations' plans: 2-4% apart), 37 plans in all."""

    def __init__(self, cfg: TrainConfig, step: int) -> None:
        at = time_budget_step(cfg)
        self.on = cfg.max_minutes is not None
        self.at = at if self.on and step < at else None  # None: the length is known
        self.t_speed: float | None = None  # when the timed steps began
        self.step_speed = 0
        # this process's first steps (compiles, allocator and thread-pool warm-up) time nothing, on a resume too
        self.warm_from = step + TIME_BUDGET_FIRST_STEPS
        self.steps_here = 0
        self.since: tuple[float, int] | None = None  # (time, step) the next re-plan measures the speed from
        self.t_step, self.t_end = 0.0, None  # when the current step began, when the last one ended
        self.window = [0.0, 0]  # the steps' own seconds and their number since the last plan
        self.steps_s, self.between_s = 0.0, 0.0  # seconds in steps and between them (evaluations, checkpoints)

    def before_step(self, step: int) -> None:
        self.t_step = time.perf_counter()
        if self.t_end is not None:
            self.between_s += self.t_step - self.t_end
        if self.at is not None and self.t_speed is None and step >= min(self.warm_from, self.at - 1):
            self.t_speed, self.step_speed = self.t_step, step

    def after_step(self, probe: bool = False) -> float:
        """Count the step's own time (from `before_step`), and return it. `probe`: the step ran on a thread count
        the guard was only trying (gptkit.threadguard), an experiment, not the run's speed, so it stays out of
        `watch`'s window. Taken in, a try of all threads beside another job (4-5× slower steps for a window) once
        cut a 2-minute run's plan 9% short near its end, where no evaluation was left to plan it back."""
        self.t_end = time.perf_counter()
        took = self.t_end - self.t_step
        self.steps_s += took
        self.steps_here += 1
        if not probe and self.steps_here > TIME_BUDGET_FIRST_STEPS:  # a resumed run's first, cold steps stay out
            self.window = [self.window[0] + took, self.window[1] + 1]
        return took

    def length(self, cfg: TrainConfig, step: int, t_start: float, n_splits: int, info) -> int | None:
        """At the budget step: the run's total steps, rank 0's choice on every rank; otherwise None."""
        if step != self.at:
            return None
        now = time.perf_counter()
        total = steps_in_budget(cfg, step, now - t_start, (now - self.t_speed) / (step - self.step_speed), n_splits)
        self.at, self.since, self.window = None, (now, step), [0.0, 0]
        return D.all_gather_objects(total, info)[0]

    def replan(self, cfg: TrainConfig, step: int, t_start: float, info) -> int | None:
        """At an evaluation step once the length is set: the total steps that end on time at the speed since the
        last plan, when it moves the end by more than REPLAN_MIN_CHANGE (rank 0's on every rank); else None."""
        if not self.on or self.at is not None or step % cfg.eval_interval or step >= cfg.max_iters:
            return None
        now = time.perf_counter()
        if self.since is None:  # resumed past the budget step: the speed is measured from here
            self.since = (now, step)
            return None
        if step - self.since[1] < 2:
            return None
        s_per_step = (now - self.since[0]) / (step - self.since[1])
        total = step + int(max(0.0, cfg.max_minutes * 60 - (now - t_start)) / s_per_step)
        total = D.all_gather_objects(total, info)[0]
        self.since, self.window = (now, step), [0.0, 0]
        return None if abs(total - cfg.max_iters) <= self.REPLAN_MIN_CHANGE * cfg.max_iters else total

    def watch(self, cfg: TrainConfig, step: int, t_start: float, info) -> int | None:
        """After each step (one process; under torchrun the ranks would have to agree every step, and the
        evaluations' re-plans are what they share): the total steps that end on time when finishing at the speed
        since the last plan would overrun the budget by more than OVERRUN, or the step that ends the run now when
        the budget is spent; else None. The speed: the steps' own mean time (at least WATCHED_STEPS steps and
        WATCHED_SHARE of the budget since the last plan), plus the time between steps (evaluations, checkpoints) in
        the share the run has spent on it so far. A machine that slows down many-fold between two evaluations
        (another job taking one of two cores stalls every two-thread region: 11-17× slower steps, measured) would
        otherwise run on for a whole evaluation interval at that speed."""
        if not self.on or self.at is not None or info.world_size > 1 or step >= cfg.max_iters:
            return None
        now = self.t_end
        left = cfg.max_minutes * 60 - (now - t_start)
        if left <= 0:
            return step if cfg.max_iters > step + 1 else None  # set_length trains the one last step
        seconds, steps = self.window
        if steps < self.WATCHED_STEPS or seconds < self.WATCHED_SHARE * cfg.max_minutes * 60:
            return None
        s_per_step = seconds / steps * (1 + self.between_s / max(self.steps_s, 1e-9))
        if (cfg.max_iters - step) * s_per_step <= left * (1 + self.OVERRUN):
            return None
        self.since, self.window = (now, step), [0.0, 0]  # the next re-plan measures the speed from here
        return step + int(left / s_per_step)


def set_length(cfg: TrainConfig, total: int, step: int, rt: Runtime, display: Progress, bar: int,
               why: str | None) -> None:
    """The run's length as the time budget planned it at `step`. When the cosine follows max_iters it goes on from
    where it is to the new end (cfg.replanned_at), so the learning rate stays continuous. Recorded in
    train_config.json and, through cfg, in every later checkpoint: a resume continues the same schedule. At least
    one step follows any plan, so that the learning rate still reaches min_lr when the time is already up."""
    total = max(total, step + 1)
    if cfg.lr_decay_iters == cfg.max_iters:
        cfg.replanned_at = [step, cosine_progress(step, cfg)]
        cfg.lr_decay_iters = total
    display.print(f"time budget {cfg.max_minutes:.3g} min (--max-minutes): "
                  + (f"re-planned at step {step}: {total} steps (was {cfg.max_iters}) {why}" if why
                     else f"training {total} steps"))
    cfg.max_iters = total
    display.update(bar, total=total)
    save_settings(cfg, rt)


# ------------------------------------------------------------------------------------------- logging
class StepLog:
    """metrics.jsonl (rank 0), the progress display, and the speed since the last logged step."""

    def __init__(self, cfg: TrainConfig, rt: Runtime, t: Trainer, metrics_path: Path, step: int) -> None:
        self.rt, self.t = rt, t
        self.display = Progress(quiet=cfg.quiet or not rt.info.is_main)
        self.bar = self.display.add_task("train", total=cfg.max_iters, completed=step)
        self.peak = None
        if rt.device.type == "cuda":
            name = torch.cuda.get_device_name(rt.device)
            self.peak = gpu_peak_flops(name)
            if self.peak is None and rt.info.is_main:
                print(f"gptkit: MFU not shown: {name} is not in the table of known GPU peaks", file=sys.stderr)
            elif self.peak is not None:
                self.peak *= rt.info.world_size
        self.metrics = open(metrics_path, "a", buffering=1) if rt.info.is_main else None  # noqa: SIM115
        self.t_last, self.tokens_last = time.perf_counter(), 0

    def write(self, record: dict[str, Any], lr: float, val: float | None) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
        mfu = self.t.flops_per_token * record["tokens_per_s"] / self.peak if self.peak else None
        self.display.update(self.bar, record["step"], line=True,
                            info=progress_info(record["train_loss"], lr, record["tokens_per_s"], val, mfu))
        self.t_last, self.tokens_last = time.perf_counter(), 0  # eval time does not count against tokens/s

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.display.close()


# ---------------------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) pre-training; returns a summary {steps, final train/val loss, best val, wall time}.

    Under torchrun every process runs this function: rank r draws micro-batches r·grad_accum … (r+1)·grad_accum−1
    of each step, so N processes × grad_accum k see exactly the batches of one process with grad_accum N·k.
    """
    rt = setup_runtime(cfg)
    with hold_run_dir(rt):
        cfg, resume_from = resume_or_start(cfg, rt)
        built = build_or_restore_model(cfg, rt, resume_from)
        settle_dtype(cfg, rt, built.model.config, resumed=resume_from is not None)
        loader, splits = open_data(cfg, rt, built.model.config.block_size)
        wrapped = place_model(cfg, rt, built)
        optimizer = adamw(built.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps,
                          fused=rt.mode != "fsdp")
        state = restore_state(cfg, rt, built, optimizer, loader, resume_from)
        metrics_path = open_run_dir(rt, resume_from is not None, state.step)
        t = Trainer(cfg, rt, built.model, wrapped, optimizer, loader, splits)
        last_eval = run_steps(cfg, rt, t, state, metrics_path)
        if rt.info.is_main:
            try:
                plot_losses(metrics_path, rt.run_dir / "loss.png")
            except Exception as e:  # a plot is a convenience; never lose a finished run over it
                print(f"gptkit: warning: could not draw loss.png ({e})", file=sys.stderr)
    return {"steps": state.step, "val_loss": last_eval.get("val"), "train_loss": last_eval.get("train"),
            "best_val": state.best_val, "best_step": state.best_step, "elapsed_s": time.perf_counter() - t.t_start,
            "run_dir": str(rt.run_dir), "world_size": rt.info.world_size, "parallel": rt.mode}


def run_steps(cfg: TrainConfig, rt: Runtime, t: Trainer, state: TrainState, metrics_path: Path) -> dict[str, float]:
    """Train from state.step to max_iters (or to the --max-minutes budget): step, log, evaluate, sample,
    checkpoint. Returns the last evaluation."""

    t.wrapped.train()
    step, last_eval = state.step, {}
    t.t_start = time.perf_counter() - state.elapsed_s
    budget = TimeBudget(cfg, step)
    if step >= cfg.max_iters and budget.at is None and rt.info.is_main:
        print(f"gptkit: {rt.run_dir} is already at step {step} (--max-iters {cfg.max_iters}): nothing to train; "
              f"pass a larger --max-iters to continue it", file=sys.stderr)
    log = StepLog(cfg, rt, t, metrics_path, step)
    guard = ThreadGuard(rt.device.type == "cpu" and cfg.threads is None and not rt.info.enabled, log.display.print)
    try:
        while step < cfg.max_iters or budget.at is not None:
            budget.before_step(step)
            lr, loss_sum = t.step(step)
            took = budget.after_step(probe=guard.trying)
            step += 1
            if step == state.step + 1:
                save_settings(cfg, rt)
            guard.after_step(took, step)
            state.tokens += t.tokens_per_step
            log.tokens_last += t.tokens_per_step
            total = budget.length(cfg, step, t.t_start, len(t.splits), rt.info)  # --max-minutes: the speed is known
            why = None
            if total is None and (total := budget.replan(cfg, step, t.t_start, rt.info)) is not None:
                why = "at the speed since the last plan"
            elif total is None and (total := budget.watch(cfg, step, t.t_start, rt.info)) is not None:
                why = "at the speed of the steps since the last plan"
            if total is not None:
                set_length(cfg, total, step, rt, log.display, log.bar, why)
            last = budget.at is None and step == cfg.max_iters
            eval_due = step % cfg.eval_interval == 0 or last
            save_due = step % cfg.save_interval == 0 or last
            log_due = eval_due or step % cfg.log_interval == 0
            if log_due or save_due:
                train_loss = D.all_reduce_mean(loss_sum, rt.info).item()  # the same on every rank
                if not math.isfinite(train_loss):  # never log on, or checkpoint, a diverged model
                    raise TrainError(f"training diverged at step {step}: the loss is {train_loss} (try a lower "
                                     f"--lr, a longer --warmup-iters, or --grad-clip 1); the checkpoints written "
                                     f"before are kept")
            if log_due:
                now = time.perf_counter()
                record = {"step": step, "train_loss": train_loss, "lr": lr, "elapsed_s": round(now - t.t_start, 3),
                          "tokens": state.tokens,
                          "tokens_per_s": round(log.tokens_last / max(now - log.t_last, 1e-9), 1)}
                if guard.now != guard.full:
                    record["threads"] = guard.now
                if eval_due:
                    last_eval = t.evaluate()
                    record.update(val_loss=last_eval.get("val"), train_eval_loss=last_eval.get("train"))
                    log.display.print(f"eval step {step}: "
                                      + ", ".join(f"{k} loss {v:.4f}" for k, v in last_eval.items()))
                    state.note_val(last_eval.get("val"), step)
                log.write(record, lr, last_eval.get("val"))
            if cfg.sample_every and step % cfg.sample_every == 0 and rt.mode != "fsdp":
                log.display.print(f"[step {step}] {quick_sample(t.model, rt.tokenizer, rt.device)!r}")
            if save_due:
                t.checkpoint(step, state)
    finally:
        guard.close()
        log.close()
    state.step = step
    return last_eval


@contextlib.contextmanager
def hold_run_dir(rt: Runtime) -> Iterator[None]:
    """One writer per run directory (gptkit.runlock): rank 0 holds the lock for the whole run (a --nproc launcher
    holds it for the processes it starts); every rank learns whether it was refused, and all stop if so."""

    with contextlib.ExitStack() as stack:
        refused = None
        if rt.info.is_main:
            try:
                stack.enter_context(run_lock(rt.run_dir))
            except RunLocked as e:
                refused = str(e)
        refused = D.all_gather_objects(refused, rt.info)[0]
        if refused is not None:
            raise RunLocked(refused)
        yield


def quick_sample(model, tokenizer, device, n: int = 80) -> str:
    start = torch.tensor([[tokenizer.eot_id if tokenizer.eot_id is not None else 0]], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    out = model.generate(start, n, temperature=0.8, top_k=200, generator=g)
    return tokenizer.decode(out[0, 1:].tolist())


def progress_info(loss: float, lr: float, tok_s: float, val: float | None, mfu: float | None) -> str:
    """The progress line's text: loss, learning rate, speed, last val loss, model FLOPs utilisation."""
    s = f"loss {loss:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s"
    if val is not None:
        s += f" val {val:.4f}"
    if mfu is not None:
        s += f" MFU {100 * mfu:.1f}%"
    return s
