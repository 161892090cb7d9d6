"""Generative pre-training: maximise Σ log P(u_i | u_<i) over a corpus (GPT-1 §3.1).

`train(cfg)` runs the loop: AdamW with decay / no-decay groups, linear warmup then cosine decay to min_lr,
gradient accumulation and clipping, bf16 autocast on GPU, periodic evaluation, and checkpoints that resume
*exactly*: a run stopped at any moment (even by `kill -9`) and resumed with `--resume` ends with the same
losses and bitwise the same weights on CPU as one that never stopped. That holds because everything random
is a function of saved state: the batches are a pure function of (seed, step, micro-step, rank), and the
torch RNG states (dropout) are saved with the optimizer.

Run layout:

    RUN/train_config.json          the resolved TrainConfig (defaults < --config file < command line)
    RUN/metrics.jsonl              one JSON line per logged step: step, train_loss, lr, elapsed_s, [val_loss]
    RUN/checkpoints/step-N/        gptkit checkpoint + trainer_state.pt (optimizer, RNG, step, data position);
                                   a sharded run (--checkpoint-format sharded) keeps weights and optimizer in
                                   shards/, one file per process (see gptkit.distributed)
    RUN/loss.png                   the loss curves, drawn at the end
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .errors import TrainError
from .options.train import TrainConfig, check_types, load_yaml_config  # noqa: F401 (re-exported)
from .optim import warmup_cosine
from .runtime import Progress, gpu_peak_flops, pick_device, pick_dtype, set_threads


RESUME_OVERRIDABLE = ("device", "quiet", "threads", "max_iters", "log_interval", "eval_interval", "save_interval",
                      "keep_last", "sample_every", "compile", "parallel", "nproc", "activation_checkpointing",
                      "grad_accum", "attention_backend", "checkpoint_format")


# ------------------------------------------------------------------------------------------ schedule
def lr_at(step: int, cfg: TrainConfig) -> float:
    """The run's learning rate at `step`: warmup, then cosine decay to min_lr (gptkit.optim.warmup_cosine)."""
    return warmup_cosine(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)


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


# ------------------------------------------------------------------------------------- checkpoints
TRAINER_STATE = "trainer_state.pt"


def rng_state(device) -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device) -> None:
    import torch

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
    import torch

    from .checkpoint import shard_manifest, write_config_files, write_model_files
    from .io import new_tmp_dir, publish_dir

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
    from .checkpoint import list_checkpoints

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
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a kill -9 mid-write
    from .io import atomic_write_text

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
    from .io import atomic_path

    try:
        with atomic_path(out_png, ".tmp.png") as tmp:  # ".png" lets matplotlib infer the format
            fig.savefig(tmp)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------- the loop
def resolve_run(cfg: TrainConfig) -> tuple[TrainConfig, Path | None]:
    """The settings the run goes on with, and the checkpoint it resumes from (None for a fresh run)."""
    from .checkpoint import list_checkpoints, read_config_json

    run_dir = Path(cfg.out)
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
    # The run continues with its own settings. Only these may be changed on resume, and only when given
    # explicitly (a flag or the config file; all of them when train() is called from Python): where and how
    # fast it runs, how long, and grad_accum, so that a run saved by N processes keeps its global batch on M.
    explicit = getattr(cfg, "explicit", None)
    fixed = sorted(n for n in (explicit or ()) if n not in RESUME_OVERRIDABLE + ("data", "out", "resume")
                   and getattr(cfg, n) != getattr(saved_cfg, n))
    if fixed:
        raise TrainError(f"--resume continues {resume_from.parent.parent} with its own settings; "
                         + ", ".join(f"--{n.replace('_', '-')} ({getattr(saved_cfg, n)} there)" for n in fixed)
                         + " cannot change (start a new run, e.g. with --init-from, to change them)")
    for name in RESUME_OVERRIDABLE:
        if explicit is None or name in explicit:
            setattr(saved_cfg, name, getattr(cfg, name))
    saved_cfg.resume, saved_cfg.out, saved_cfg.data = True, cfg.out, cfg.data
    return saved_cfg.resolved(), resume_from


def check_backend(cfg: TrainConfig, device) -> None:
    if cfg.attention_backend == "flex" and device.type != "cuda":
        raise TrainError(f"--attention-backend flex needs a CUDA device (torch's flex_attention has no backward on "
                         f"{device.type}): use auto or sdpa")


def preflight(cfg: TrainConfig, nproc: int) -> None:
    """Find the mistakes every one of `nproc` processes would make before torchrun starts them, so that the
    user reads one line instead of N copies and a launcher's traceback."""
    import torch

    from .data.loader import load_tokenizer

    cfg.validate()
    load_tokenizer(Path(cfg.data))
    device = pick_device(cfg.device)
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise TrainError(f"--nproc {nproc} needs a GPU per process, but {torch.cuda.device_count()} are visible")
    cfg, _ = resolve_run(cfg)
    check_backend(cfg, device)


def build_model_config(cfg: TrainConfig, vocab_size: int):
    from .config import GPTConfig

    base = GPTConfig.from_preset(cfg.preset)
    over: dict[str, Any] = {"vocab_size": vocab_size}
    for name in ("n_layer", "n_head", "n_embd", "block_size", "bias"):
        if getattr(cfg, name) is not None:
            over[name] = getattr(cfg, name)
    if cfg.dropout is not None:
        over.update(embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, resid_pdrop=cfg.dropout)
    return dataclasses.replace(base, **over)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) pre-training; returns a summary {steps, final train/val loss, best val, wall time}.

    Under torchrun every process runs this function: rank r draws micro-batches r·grad_accum … (r+1)·grad_accum−1
    of each step, so N processes × grad_accum k see exactly the batches of one process with grad_accum N·k.
    """
    import torch
    import torch.nn.functional as F

    from . import distributed as D
    from .checkpoint import (SHARDS_DIR, check_shards, checkpoint_config, checkpoint_tokenizer, is_sharded,
                             load_model, read_config_json)
    from .io import atomic_write_text, new_tmp_dir
    from .data.loader import BatchLoader, load_tokenizer
    from .model import GPT
    from .optim import adamw, optimizer_step, set_lr

    cfg.validate()
    run_dir = Path(cfg.out)
    data_dir = Path(cfg.data)
    tokenizer = load_tokenizer(data_dir)  # DataError when data_dir is not a `gptkit prepare` output
    device = pick_device(cfg.device)
    info = D.init(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    mode = cfg.parallel if cfg.parallel != "auto" else ("ddp" if info.enabled else "none")
    if mode != "none" and not info.enabled:
        mode = "none"  # one process: nothing to parallelise
    set_threads(cfg.threads)
    ptdtype = pick_dtype(cfg.dtype, device)

    # ---- resume or start fresh
    trainer: dict[str, Any] = {"step": 0, "best_val": None, "best_step": None, "tokens": 0, "elapsed_s": 0.0}
    if cfg.resume:
        if info.is_main:
            clean_stale_tmp(run_dir)
        D.barrier(info)
    cfg, resume_from = resolve_run(cfg)
    check_backend(cfg, device)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    sharded_resume = resume_from is not None and is_sharded(resume_from)
    init_sd = None  # a fresh FSDP run: rank 0's initial weights, broadcast once the model is sharded
    if sharded_resume:  # built without storage; each rank reads its own slices once the model is sharded (below)
        check_shards(resume_from, read_config_json(resume_from))
        with torch.device("meta"):
            model = GPT(checkpoint_config(resume_from))
        model.tokenizer = checkpoint_tokenizer(resume_from)
    elif resume_from is not None:
        model = load_model(resume_from, map_location=device)
    if resume_from is not None:
        saved_tok = model.tokenizer
        if saved_tok is None or saved_tok.vocab_size != tokenizer.vocab_size or saved_tok.kind != tokenizer.kind:
            raise TrainError(f"the checkpoint's tokenizer does not match {data_dir}'s "
                             f"({getattr(saved_tok, 'kind', None)}/{getattr(saved_tok, 'vocab_size', None)} vs "
                             f"{tokenizer.kind}/{tokenizer.vocab_size})")
        try:
            state = torch.load(resume_from / TRAINER_STATE, map_location="cpu", weights_only=True)
        except Exception as e:  # a cut or foreign file: torch's own message runs to many lines
            why = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise TrainError(f"{resume_from / TRAINER_STATE} cannot be read ({why[:200]}); resume from an earlier "
                             f"checkpoint by removing this one") from None
    else:
        if cfg.init_from:
            model = load_model(cfg.init_from, map_location=device)
            mc, asked = model.config, build_model_config(cfg, tokenizer.vocab_size)
            changed = [n for n in ("n_layer", "n_head", "n_embd", "block_size", "bias") if getattr(cfg, n) is not None
                       and getattr(asked, n) != getattr(mc, n)]
            changed += ["dropout"] if cfg.dropout is not None and (asked.embd_pdrop, asked.attn_pdrop,
                                                                  asked.resid_pdrop) != (mc.embd_pdrop, mc.attn_pdrop,
                                                                                         mc.resid_pdrop) else []
            if changed:
                raise TrainError(f"--init-from {cfg.init_from}: the model's shape comes from the checkpoint; "
                                 + ", ".join(f"--{n.replace('_', '-')}" for n in changed) + " cannot change it")
            if model.tokenizer is not None and model.tokenizer.vocab_size != tokenizer.vocab_size:
                raise TrainError(f"--init-from {cfg.init_from}: its tokenizer ({model.tokenizer.vocab_size} ids) "
                                 f"does not match {data_dir}'s ({tokenizer.vocab_size})")
        elif mode == "fsdp":  # only rank 0 builds the whole model (on CPU); the others get its weights in shards
            mc = build_model_config(cfg, tokenizer.vocab_size)
            init_sd = GPT(mc).state_dict() if info.is_main else {}  # the same init as one process would make
            with torch.device("meta"):
                model = GPT(mc)
        else:
            model = GPT(build_model_config(cfg, tokenizer.vocab_size)).to(device)
        state = None
    mcfg = model.config
    model.tokenizer = tokenizer
    model.set_attention_backend(cfg.attention_backend)  # auto: flex_attention for banded layers on CUDA

    loader = BatchLoader(data_dir, cfg.batch_size, mcfg.block_size, seed=cfg.seed, device=device)
    splits = [s for s in ("train", "val") if len(loader.dataset(s)) > 0]
    for split in splits:
        if len(loader.dataset(split)) < mcfg.block_size + 1:
            raise TrainError(f"the {split} split of {data_dir} has {len(loader.dataset(split))} tokens, fewer "
                             f"than the context ({mcfg.block_size}) + 1: use more text or a smaller --block-size")
    if "train" not in splits:
        raise TrainError(f"{data_dir} has no training tokens")

    if cfg.activation_checkpointing:
        D.checkpoint_blocks(model)

    def materialize() -> None:  # storage for a meta-built model (uninitialised: the shards fill it)
        model.to_empty(device=device)
        model.reset_buffers_and_ties()

    if sharded_resume and mode != "fsdp":
        materialize()
    wrapped = D.parallelize(model, mode, device, ptdtype if ptdtype != torch.float32 else None) \
        if mode != "none" else model
    if model.transformer.wte.weight.is_meta:  # after sharding: each rank allocates only its own shards
        materialize()
    if init_sd is not None:
        D.load_full_from_rank0(model, init_sd)
        del init_sd
    # fused AdamW (one kernel for all parameters) on plain tensors; FSDP's DTensors take the foreach path
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, fused=mode != "fsdp")
    if state is not None:
        try:
            if sharded_resume:
                D.load_sharded(resume_from / SHARDS_DIR, model, optimizer)  # weights and optimizer, resharded
            else:
                D.load_optimizer_state(model, optimizer, state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise TrainError(f"{resume_from / TRAINER_STATE}: the optimizer state does not fit this model "
                             f"({type(e).__name__}: {e})") from None
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank], device)
        elif info.is_main:
            set_rng_state(rngs[0], device)  # other ranks' dropout streams restart from the seed below
        else:
            torch.manual_seed(cfg.seed + 7919 * info.rank + trainer["step"])
        loader.load_state_dict(state["loader"])  # refuses a resume on other data
        trainer.update({k: state[k] for k in trainer if k in state})
    elif info.rank > 0:
        torch.manual_seed(cfg.seed + 7919 * info.rank)  # each rank its own dropout masks
    metrics_path = run_dir / "metrics.jsonl"
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            metrics_path.unlink(missing_ok=True)
        else:
            truncate_metrics(metrics_path, trainer["step"])
        atomic_write_text(run_dir / "train_config.json", json.dumps(dataclasses.asdict(cfg), indent=2))

    fwd_model = torch.compile(wrapped) if cfg.compile else wrapped
    autocast = torch.autocast(device.type, dtype=ptdtype, enabled=ptdtype != torch.float32)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * mcfg.block_size * info.world_size
    peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        if peak is None and info.is_main:
            print(f"gptkit: MFU not shown: {name} is not in the table of known GPU peaks", file=sys.stderr)
        elif peak is not None:
            peak *= info.world_size
    flops_per_token = mcfg.flops_per_token(mcfg.block_size)

    def loss_of(x, y):
        with autocast:
            logits = fwd_model(x)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        # The fixed eval batches are shared out: rank r takes batches r, r + N, ...; every rank runs the same
        # number of forward passes (FSDP needs all ranks in each), a rank short of one repeats a batch at weight 0.
        wrapped.eval()
        out = {}
        for split in splits:
            total = torch.zeros(2, device=device)  # (sum of batch losses, batches)
            for i in range(info.rank, -(-cfg.eval_iters // info.world_size) * info.world_size, info.world_size):
                loss = loss_of(*loader.eval_batch(split, min(i, cfg.eval_iters - 1)))
                if i < cfg.eval_iters:
                    total += torch.stack([loss.detach(), torch.ones((), device=device)])
            total = D.all_reduce_mean(total, info) * info.world_size
            out[split] = (total[0] / total[1]).item()
        wrapped.train()
        return out

    ckpt_format = cfg.checkpoint_format if cfg.checkpoint_format != "auto" else \
        ("sharded" if mode == "fsdp" else "full")

    def checkpoint(step: int) -> None:
        rngs = D.all_gather_objects(rng_state(device), info)
        tmp = None
        if ckpt_format == "sharded":  # every rank writes its shards into rank 0's temporary directory
            tmp = Path(D.all_gather_objects(str(new_tmp_dir(step_dir(run_dir, step))) if info.is_main else None,
                                            info)[0])
            try:
                D.save_sharded(tmp / SHARDS_DIR, model, optimizer)
            except BaseException:
                if info.is_main:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
            D.barrier(info)
            model_sd = optim_sd = None
        else:
            model_sd, optim_sd = D.full_state_dicts(model, optimizer)  # collective under FSDP
        if info.is_main:
            trainer.update(step=step, elapsed_s=time.perf_counter() - t_start)
            save_checkpoint(run_dir, step, model, model_sd, optim_sd, tokenizer, cfg,
                            {**trainer, "rng": rngs, "loader": loader.state_dict(), "world_size": info.world_size,
                             "checkpoint_format": ckpt_format}, tmp=tmp)
            prune_checkpoints(run_dir, cfg.keep_last, trainer["best_step"])
        D.barrier(info)

    display = Progress(quiet=cfg.quiet or not info.is_main)
    bar = display.add_task("train", total=cfg.max_iters, completed=trainer["step"])
    wrapped.train()
    step = trainer["step"]
    last_eval: dict[str, float] = {}
    t_start = time.perf_counter() - trainer["elapsed_s"]
    t_last, tokens_last = time.perf_counter(), 0
    budget_at = time_budget_step(cfg) if cfg.max_minutes is not None and step < time_budget_step(cfg) else None
    t_speed = None  # when the steps timed for --max-minutes began
    if step >= cfg.max_iters and budget_at is None and info.is_main:
        print(f"gptkit: {run_dir} is already at step {step} (--max-iters {cfg.max_iters}): nothing to train; pass a "
              f"larger --max-iters to continue it", file=sys.stderr)
    metrics = open(metrics_path, "a", buffering=1) if info.is_main else None
    try:
        while step < cfg.max_iters or (budget_at is not None and step < budget_at):
            if budget_at is not None and t_speed is None and step >= min(TIME_BUDGET_FIRST_STEPS, budget_at - 1):
                t_speed, step_speed = time.perf_counter(), step
            lr = lr_at(step, cfg)
            set_lr(optimizer, lr)
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                x, y = loader.get_batch("train", step, info.rank * cfg.grad_accum + micro)
                with D.no_grad_sync(wrapped, mode, sync=micro == cfg.grad_accum - 1):
                    loss = loss_of(x, y) / cfg.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
            optimizer_step(model, optimizer, cfg.grad_clip)
            step += 1
            trainer["tokens"] += tokens_per_step
            tokens_last += tokens_per_step
            if step == budget_at:  # --max-minutes: now the speed is known, fix the run's length
                now = time.perf_counter()
                total = steps_in_budget(cfg, step, now - t_start, (now - t_speed) / (step - step_speed), len(splits))
                total = D.all_gather_objects(total, info)[0]  # every rank stops at rank 0's choice
                if cfg.lr_decay_iters == cfg.max_iters:
                    cfg.lr_decay_iters = total
                cfg.max_iters, budget_at = max(step, total), None
                display.print(f"time budget {cfg.max_minutes:.1f} min (--max-minutes): training {cfg.max_iters} "
                              f"steps")
                display.update(bar, total=cfg.max_iters)
                if info.is_main:
                    atomic_write_text(run_dir / "train_config.json", json.dumps(dataclasses.asdict(cfg), indent=2))

            last = budget_at is None and step == cfg.max_iters
            eval_due = step % cfg.eval_interval == 0 or last
            save_due = step % cfg.save_interval == 0 or last
            if eval_due or save_due or step % cfg.log_interval == 0:
                train_loss = D.all_reduce_mean(loss_sum, info).item()  # the same on every rank
                if not math.isfinite(train_loss):  # never log on, or checkpoint, a diverged model
                    raise TrainError(f"training diverged at step {step}: the loss is {train_loss} (try a lower "
                                     f"--lr, a longer --warmup-iters, or --grad-clip 1); the checkpoints written "
                                     f"before are kept")
            if eval_due or step % cfg.log_interval == 0:
                now = time.perf_counter()
                tok_s = tokens_last / max(now - t_last, 1e-9)
                record = {"step": step, "train_loss": train_loss, "lr": lr, "elapsed_s": round(now - t_start, 3),
                          "tokens": trainer["tokens"], "tokens_per_s": round(tok_s, 1)}
                if eval_due:
                    last_eval = evaluate()
                    record["val_loss"] = last_eval.get("val")
                    record["train_eval_loss"] = last_eval.get("train")
                    display.print(f"eval step {step}: " + ", ".join(f"{k} loss {v:.4f}" for k, v in last_eval.items()))
                    val = last_eval.get("val")
                    if val is not None and (trainer["best_val"] is None or val < trainer["best_val"]):
                        trainer["best_val"], trainer["best_step"] = val, step
                if metrics is not None:
                    metrics.write(json.dumps(record) + "\n")
                mfu = flops_per_token * tok_s / peak if peak else None
                display.update(bar, step, info=progress_info(train_loss, lr, tok_s, last_eval.get("val"), mfu),
                               line=True)
                t_last, tokens_last = time.perf_counter(), 0  # eval time does not count against tokens/s
            if cfg.sample_every and step % cfg.sample_every == 0 and mode != "fsdp":
                text = quick_sample(model, tokenizer, device)
                display.print(f"[step {step}] {text!r}")
            if save_due:
                checkpoint(step)
    finally:
        if metrics is not None:
            metrics.close()
        display.close()
    if info.is_main:
        try:
            plot_losses(metrics_path, run_dir / "loss.png")
        except Exception as e:  # a plot is a convenience; never lose a finished run over it
            print(f"gptkit: warning: could not draw loss.png ({e})", file=sys.stderr)
    wall = time.perf_counter() - t_start
    return {"steps": step, "val_loss": last_eval.get("val"), "train_loss": last_eval.get("train"),
            "best_val": trainer["best_val"], "best_step": trainer["best_step"], "elapsed_s": wall,
            "run_dir": str(run_dir), "world_size": info.world_size, "parallel": mode}


def quick_sample(model, tokenizer, device, n: int = 80) -> str:
    import torch

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
