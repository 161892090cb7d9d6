"""Options of `gptkit train`: TrainConfig, every field a flag (and a key of the --config YAML file)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import TrainError
from . import common
from .generator import check_types as _check_types
from .generator import load_yaml_options, opt

WARMUP_CAP = 2000
"""The most warmup steps the default warmup (--warmup-fraction) gives: GPT-1's 2,000 (§4.1)."""


SIZES = ("batch_size", "grad_accum", "n_layer", "n_head", "n_embd", "block_size")
SIZE_MAX = 2**31 - 1
"""The largest model or batch size (a dimension of a tensor): past it torch and numpy fail in their own words
(an overflow, "Maximum allowed dimension exceeded") before any memory is asked for; below it a size too large for
the machine is an out-of-memory error (gptkit.cli)."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Field names follow nanoGPT; each is a `--flag` of `gptkit train`."""

    QUICK: ClassVar[dict[str, float]] = {"max_iters": 20, "max_minutes": 0.25, "eval_interval": 10, "eval_iters": 2}

    data: str | None = opt(None, "prepared data directory (from `gptkit prepare`)")
    out: str = common.out_dir("run directory for checkpoints, metrics and plots", default="runs/gpt")
    preset: str = opt("gpt-micro", "model preset (see `gptkit info`); the flags below override its fields")
    init_from: str | None = opt(None, "start from the weights of this checkpoint instead of a random init")
    # model overrides (None: the preset's value)
    n_layer: int | None = opt(None, "layers")
    n_head: int | None = opt(None, "attention heads")
    n_embd: int | None = opt(None, "model width")
    block_size: int | None = opt(None, "context length")
    dropout: float | None = opt(None, "dropout on embeddings, attention and residuals")
    bias: bool | None = opt(None, "biases in linear layers and LayerNorms")
    # optimisation
    batch_size: int = opt(12, "sequences per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    max_iters: int = opt(2000, "optimizer steps")
    max_minutes: float | None = opt(None, "train for about this many minutes instead: at the end of warmup, "
                                         "--max-iters (and the cosine's length) is set from the measured speed, "
                                         "and re-planned at each evaluation from the speed since the last one")
    lr: float = opt(6e-4, "peak learning rate")
    min_lr: float | None = opt(None, "final learning rate of the cosine decay (default lr/10, as GPT-3)")
    warmup_iters: int | None = opt(None, "linear warmup steps (default: --warmup-fraction of the cosine's length, "
                                         "at most 2000)")
    warmup_fraction: float = opt(0.05, "default warmup as a share of the cosine's length (--lr-decay-iters, default "
                                       "--max-iters; with --max-minutes, of --max-iters as given)")
    lr_decay_iters: int | None = opt(None, "steps over which the cosine decays (default max_iters)")
    weight_decay: float = opt(0.1, "AdamW weight decay on matrices (not biases, gains)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2 (GPT-3: 0.95)")
    eps: float = opt(1e-8, "AdamW epsilon")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: off)")
    # evaluation, logging, checkpoints
    eval_interval: int = opt(250, "evaluate every N steps (and at the end)")
    eval_iters: int = opt(20, "batches per evaluation")
    log_interval: int = opt(10, "log every N steps")
    save_interval: int | None = opt(None, "checkpoint every N steps (default eval_interval) and at the end")
    keep_last: int = opt(2, "keep this many recent checkpoints (the best one is always kept)")
    # system
    seed: int = common.seed("init, dropout, batches")
    device: str = common.device()
    dtype: str = opt("auto", "float32, bfloat16 or float16 autocast; auto: bfloat16 on GPUs that have it and on CPUs "
                             "with bf16 units where it was measured faster at this shape, else float32")
    compile: bool = opt(False, "torch.compile the model")
    attention_backend: str = opt("auto", "kernel of the banded attention layers: sdpa (masked), flex "
                                "(flex_attention block masks, GPU) or auto (flex on CUDA, else sdpa)")
    parallel: str = opt("auto", "none, ddp or fsdp across torchrun processes (auto: ddp when launched with >1)")
    nproc: int | None = opt(None, "launch this many processes with torchrun (one node) and train in parallel")
    activation_checkpointing: bool = opt(False, "recompute each block's activations in backward (saves memory)")
    checkpoint_format: str = opt("auto", "full (rank 0 writes model.safetensors) or sharded (every process writes "
                                "its own shards, nothing gathered); auto: sharded under FSDP, else full")
    threads: int | None = common.guarded_threads()
    resume: bool = opt(False, "continue the run in --out from its latest checkpoint")
    sample_every: int = opt(0, "print a short sample every N steps (0: never)")
    quiet: bool = common.quiet(old={"--no-quiet": None})
    # set by the run, not a flag: where --max-minutes last re-planned the cosine, [step, progress reached there]
    replanned_at: list | None = None
    # set by the run, not a flag: how its bf16 steps compute on the CPU, chosen when it started (gptkit.train.
    # choose_bf16_paths), so that a resume computes alike
    bf16_paths: dict | None = None

    def resolved(self) -> TrainConfig:
        c = dataclasses.replace(self)
        if c.min_lr is None:
            c.min_lr = c.lr / 10
        if c.lr_decay_iters is None:
            c.lr_decay_iters = c.max_iters
        if c.warmup_iters is None:  # a share of the schedule, as Hugging Face's warmup_ratio; GPT-1 warmed up 2000
            c.warmup_iters = min(WARMUP_CAP, math.ceil(round(c.warmup_fraction * c.lr_decay_iters, 6)))
        if c.save_interval is None:
            c.save_interval = c.eval_interval
        return c

    def validate(self) -> None:
        if not self.data:
            raise TrainError("--data is required: a directory written by `gptkit prepare`")
        check_types(dataclasses.asdict(self), "")
        for name in ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters", "log_interval",
                     "keep_last", "lr_decay_iters", "save_interval", "threads", "n_layer", "n_head", "n_embd",
                     "block_size", "nproc"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise TrainError(f"--{name.replace('_', '-')} must be positive, got {v}")
        for name in SIZES:
            v = getattr(self, name)
            if v is not None and v > SIZE_MAX:
                raise TrainError(f"--{name.replace('_', '-')} must be at most {SIZE_MAX:,}, got {v:,}")
        for name in ("warmup_iters", "sample_every"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")

        def bad(v: float | None, lo: float, hi: float = math.inf, lo_open: bool = False) -> bool:
            return v is not None and not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi)

        for name, lo, hi, lo_open, want in (
                ("max_minutes", 0, math.inf, True, "a positive number"), ("lr", 0, 1, True, "in (0, 1]"),
                ("min_lr", 0, 1, False, "in [0, 1]"), ("weight_decay", 0, math.inf, False, "finite and >= 0"),
                ("beta1", 0, 0.999999, False, "in [0, 1)"), ("beta2", 0, 0.999999, False, "in [0, 1)"),
                ("eps", 0, 1, True, "in (0, 1]"), ("grad_clip", 0, math.inf, False, "finite and >= 0 (0: off)"),
                ("dropout", 0, 0.999999, False, "in [0, 1)"), ("warmup_fraction", 0, 1, False, "in [0, 1]")):
            if bad(getattr(self, name), lo, hi, lo_open):
                raise TrainError(f"--{name.replace('_', '-')} must be {want}, got {getattr(self, name)}")
        if self.min_lr is not None and self.min_lr > self.lr:
            raise TrainError(f"--min-lr ({self.min_lr}) is above --lr ({self.lr}): the cosine decays from lr to "
                             f"min_lr")
        if self.parallel not in ("auto", "none", "ddp", "fsdp"):
            raise TrainError(f"--parallel must be auto, none, ddp or fsdp, got {self.parallel!r}")
        if self.nproc is not None and self.nproc < 1:
            raise TrainError(f"--nproc must be >= 1, got {self.nproc}")
        if self.attention_backend not in ("auto", "sdpa", "flex"):  # gptkit.model.ATTENTION_BACKENDS
            raise TrainError(f"--attention-backend must be auto, sdpa or flex, got {self.attention_backend!r}")
        if self.checkpoint_format not in ("auto", "full", "sharded"):
            raise TrainError(f"--checkpoint-format must be auto, full or sharded, got {self.checkpoint_format!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise TrainError(f"--dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")



def check_types(values: dict[str, Any], where: str) -> None:
    """Each option has its TrainConfig field's type (a YAML file can say `max_iters: 2.5` or `compile: "no"`)."""
    _check_types(TrainConfig, values, where, TrainError)


def load_yaml_config(path: str) -> dict[str, Any]:
    """The options a YAML config file sets, type-checked against TrainConfig."""
    return load_yaml_options(TrainConfig, path, TrainError)
