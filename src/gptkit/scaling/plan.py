"""The ladder: which model sizes to train on how many tokens, with which optimiser settings, in a time budget.

Shapes. One knob, the depth L ≥ `min_depth`: width d = aspect · L rounded to a multiple of the head size, heads =
d / head size, everything else GPT-2's pre-LN block (the `gpt-mini` preset's fields, exact GELU, no dropout).
Kaplan et al. (2020, §3.1, Figs. 5-6) found the loss depends on the shape only weakly at a fixed parameter count,
except for models of fewer than 2 layers, which fall off the trend: the family starts at 2 layers by default.

Token budgets. `ratio`: every size trained on `tokens_per_param` × N tokens (Chinchilla's ≈ 20 per parameter,
Hoffmann et al. 2022 §3, Table 3), one point per size. `isoflop`: Chinchilla's approach 2 (§3.2): a few compute
levels, several sizes at each, D = C / FLOPs-per-token. N is the non-embedding parameter count (Kaplan §2.1: with
embeddings excluded the laws hold down to small sizes); compute C is `GPTConfig.flops_per_token()` × tokens, the
accounting of `gptkit info` (6 per weight and token, including the tied vocabulary projection, plus attention).

Optimiser rules, functions of the size (docs/scaling.md states them):
- peak learning rate lr(d) = min(LR_MAX, LR_WIDTH / d) for width d: Adam's learning rate for hidden matrices falls
  as 1/width (Yang et al. 2022, μP), and 0.5/d is where GPT-3's own table sits (Brown et al. 2020, Table
  2.1: 6e-4 at d = 768 is 0.46/d; 1.2e-4 at d = 4096 is 0.49/d); capped at LR_MAX = 7e-3 for narrow models;
- batch in tokens B(C) = BATCH_FRACTION · 0.292 · C^0.3271 (DeepSeek LLM 2024, §3.1, eq. 1, fitted at 1e17-1e20
  FLOPs, scaled down for the small runs here), as a power of two of sequences of the context, halved until the run
  has at least `min_steps` steps;
- warmup 5% of the steps, then cosine decay to lr/10 over exactly the run's length (GPT-3 App. B; Chinchilla §3
  found a cosine longer than the run overstates the loss), AdamW β = (0.9, 0.95), weight decay 0.1, no dropout.

Time. Each run's minutes are its FLOPs over a speed measured for its shape and batch (`speed.py`); the budget
search picks the largest ladder whose estimated total fits.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from ..config import GPTConfig
from ..errors import GptkitError, MachineTooSmall

BASE_PRESET = "gpt-mini"
"""The architecture the ladder varies (pre-LN, final LN, exact GELU, learned positions, tied embeddings)."""
MIN_POINTS = 5
"""A law with an irreducible term has 3 (L(C)) or 5 (L(N, D)) parameters: fewer runs than 5 cannot test it."""
EPOCHS_WARN = 4.0
"""Muennighoff et al. (2023, §5): up to about 4 epochs, repeated tokens are worth almost as much as new ones."""
ISOFLOP_GROWTH = 1.25
"""The budget search grows an isoflop ladder's top compute by this factor until the next would not fit."""
EPOCHS_MAX = 40.0
"""Muennighoff et al. (2023, §5): by about 40 epochs more repetition is worth nothing; a plan past it is refused."""


class ScaleError(GptkitError):
    """A scaling study that cannot be planned, run or fitted as asked (one line for the user)."""


# ------------------------------------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_head: int

    @property
    def name(self) -> str:
        return f"L{self.n_layer}-d{self.n_embd}"


def shape_of_depth(depth: int, aspect: int, head_size: int) -> Shape:
    """The family's shape at `depth`: width aspect · depth, a whole number (≥ 1) of heads of `head_size`."""
    heads = max(1, round(aspect * depth / head_size))
    return Shape(depth, heads * head_size, heads)


def model_config(shape: Shape, vocab_size: int, block_size: int) -> GPTConfig:
    """The GPTConfig a ladder run trains (what `gptkit train --preset gpt-mini --n-layer ...` builds)."""
    return dataclasses.replace(GPTConfig.from_preset(BASE_PRESET), n_layer=shape.n_layer, n_embd=shape.n_embd,
                               n_head=shape.n_head, vocab_size=vocab_size, block_size=block_size)


# ------------------------------------------------------------------------------------------------- rules
LR_WIDTH = 0.5
"""lr = LR_WIDTH / width; at this scale it beat Kaplan et al.'s eq. D.1 (docs/scaling.md, "the optimiser rules")."""
LR_MAX = 7e-3
"""The cap for narrow models (0.5/d passes it below width 72). At width 32 the rule's 1.6e-2 is far too high, and
a cap of 1e-2 made the longest run unstable: 2×32 on 23.7 M characters at batches of 1,024 ended at val 2.485 with
1e-2, 1.817 with 7e-3, 1.787 with 4e-3, 1.811 with 2e-3; but 4e-3 was worse for 3×48 on 8.9 M (1.817; 1.812 at
7e-3, 1.805 at 1e-2) and 4×64 on 4.3 M (1.955; 1.901 at 7e-3, 1.871 at 7.8e-3). The best rate falls with the run's
length too; 7e-3 is stable and within 0.03 of the best of all three (docs/scaling.md, "study 2")."""
BATCH_FRACTION = 0.25
"""DeepSeek's optimal batch extrapolated down to 1e11-1e14 FLOPs is too large for these runs, which are short of
steps, not of tokens; a quarter of it won where it was tried (docs/scaling.md, "the optimiser rules")."""


def lr_rule(n_embd: int) -> float:
    """The peak AdamW learning rate of a model of width `n_embd` (see LR_WIDTH)."""
    return min(LR_MAX, LR_WIDTH / n_embd)


def batch_rule(flops: float, block_size: int, tokens: float, min_steps: int) -> int:
    """Sequences per step: BATCH_FRACTION of DeepSeek LLM's B(C) = 0.292 · C^0.3271 tokens as a power of two of
    sequences, halved while the run would take fewer than `min_steps` steps."""
    seqs = 2 ** max(0, round(math.log2(max(1.0, BATCH_FRACTION * 0.292 * flops ** 0.3271 / block_size))))
    while seqs > 1 and tokens / (seqs * block_size) < min_steps:
        seqs //= 2
    return seqs


@dataclass
class Point:
    """One run of the ladder: its shape, length and optimiser settings, and what they cost."""

    name: str
    shape: Shape
    batch_size: int
    steps: int
    lr: float
    warmup_iters: int
    tokens: int
    flops: float
    params: int
    non_embedding_params: int
    level: int | None = None  # the isoflop level it belongs to (None in a ratio ladder)
    minutes: float | None = None  # estimated wall time

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = dataclasses.asdict(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Point:
        return cls(**{**d, "shape": Shape(**d["shape"])})


def make_point(shape: Shape, tokens: float, vocab_size: int, block_size: int, min_steps: int,
               level: int | None = None, prefix: str = "") -> Point:
    """A run of `shape` on about `tokens` tokens (rounded to whole steps), with the rules' lr, batch, warmup."""
    cfg = model_config(shape, vocab_size, block_size)
    fpt = cfg.flops_per_token()
    batch = batch_rule(fpt * tokens, block_size, tokens, min_steps)
    steps = max(1, round(tokens / (batch * block_size)))
    used = steps * batch * block_size
    name = f"{prefix}{shape.name}-{used / 1e6:.3g}Mtok".replace("+", "")
    return Point(name=name, shape=shape, batch_size=batch, steps=steps,
                 lr=round(lr_rule(shape.n_embd), 6), warmup_iters=max(1, round(0.05 * steps)),
                 tokens=used, flops=float(fpt * used), params=cfg.num_params,
                 non_embedding_params=cfg.non_embedding_params, level=level)


# ------------------------------------------------------------------------------------------------ ladders
@dataclass
class PlanSpec:
    """What the planner needs to know (from the options and the data directory)."""

    vocab_size: int
    block_size: int
    train_tokens: int
    budget_minutes: float
    ladder: str = "ratio"
    points: int = 12
    tokens_per_param: float = 20.0
    aspect: int = 32
    head_size: int = 32
    min_steps: int = 100
    levels: int = 4
    min_depth: int = 2
    level_factor: float = 4.0


Speed = Callable[[GPTConfig, int], float]
"""speed(model config, batch size) -> training tokens per second (measured, or a constant in tests)."""


def ratio_ladder(spec: PlanSpec, top: float) -> list[Point]:
    """`spec.points` depths spread geometrically up to depth `top` (N grows ~ depth³), each on tokens_per_param
    × N."""
    top = int(top)
    bottom = max(spec.min_depth, min(top - spec.points + 1, round(top / 4)))
    depths: list[int] = []
    for i in range(spec.points):
        d = round(bottom * (top / bottom) ** (i / max(1, spec.points - 1)))
        depths.append(max(d, depths[-1] + 1) if depths else d)
    out = []
    for d in depths:
        shape = shape_of_depth(d, spec.aspect, spec.head_size)
        n = model_config(shape, spec.vocab_size, spec.block_size).non_embedding_params
        out.append(make_point(shape, spec.tokens_per_param * n, spec.vocab_size, spec.block_size, spec.min_steps))
    return out


def isoflop_ladder(spec: PlanSpec, c_top: float) -> list[Point]:
    """Chinchilla approach 2: `spec.levels` compute levels `level_factor` apart, the top one `c_top` FLOPs; at
    each level the depths around the ratio-optimal one (as many as `points` spread over the levels, at least 3)."""
    per_level = max(3, math.ceil(spec.points / spec.levels))
    out = []
    for level in range(spec.levels):
        c = c_top / spec.level_factor ** (spec.levels - 1 - level)
        centre = ratio_depth(spec, c)
        lo = max(spec.min_depth, centre - per_level // 2)
        for d in range(lo, lo + per_level):
            s = shape_of_depth(d, spec.aspect, spec.head_size)
            fpt = model_config(s, spec.vocab_size, spec.block_size).flops_per_token()
            out.append(make_point(s, c / fpt, spec.vocab_size, spec.block_size, spec.min_steps, level=level,
                                  prefix=f"c{level}-"))
    return out


def ratio_depth(spec: PlanSpec, flops: float) -> int:
    """The depth whose tokens_per_param run costs closest to `flops` (in log)."""
    best, best_gap = spec.min_depth, math.inf
    for d in range(spec.min_depth, 257):
        cfg = model_config(shape_of_depth(d, spec.aspect, spec.head_size), spec.vocab_size, spec.block_size)
        gap = abs(math.log(cfg.flops_per_token() * spec.tokens_per_param * cfg.non_embedding_params / flops))
        if gap < best_gap:
            best, best_gap = d, gap
        elif gap > best_gap:
            break
    return best


LADDERS = {"ratio": ratio_ladder, "isoflop": isoflop_ladder}


def estimate(points: list[Point], spec: PlanSpec, speed: Speed) -> float:
    """Fill in each point's expected minutes; return the total."""
    for p in points:
        tok_s = speed(model_config(p.shape, spec.vocab_size, spec.block_size), p.batch_size)
        p.minutes = p.tokens / tok_s / 60
    return sum(p.minutes or 0.0 for p in points)


def plan_ladder(spec: PlanSpec, speed: Speed, warn: Callable[[str], None] | None = None) -> list[Point]:
    """The largest ladder of `spec.ladder`'s kind whose estimated time fits `spec.budget_minutes` and whose
    models fit this machine's memory (a budget larger than the machine can use plans the largest that fit)."""
    if spec.points < MIN_POINTS:
        raise ScaleError(f"--points {spec.points}: a fit needs at least {MIN_POINTS} runs")
    if spec.ladder not in LADDERS:
        raise ScaleError(f"--ladder must be one of {', '.join(LADDERS)}, got {spec.ladder!r}")
    make = LADDERS[spec.ladder]
    if spec.ladder == "ratio":  # the deepest model grows one layer at a time
        top: float = spec.min_depth + spec.points - 1
        grow: Callable[[float], float] = lambda t: t + 1
    else:  # the top compute grows in steps of ISOFLOP_GROWTH, from the shallowest model's at tokens_per_param
        cfg = model_config(shape_of_depth(spec.min_depth, spec.aspect, spec.head_size), spec.vocab_size,
                           spec.block_size)
        top = cfg.flops_per_token() * spec.tokens_per_param * cfg.non_embedding_params
        grow = lambda t: t * ISOFLOP_GROWTH  # noqa: E731
    best = None
    while True:
        ladder = make(spec, top)
        try:
            total = estimate(ladder, spec, speed)
        except MachineTooSmall as e:
            if best is None:  # in the study's terms (train's advice names flags scale does not take)
                raise ScaleError(f"not even the smallest {spec.ladder} ladder fits this machine's memory: its "
                                 f"models need more (in train's words: {e}); lower --tokens-per-param, --min-depth, "
                                 f"--aspect or --block-size") from None
            if warn is not None:
                warn(f"the plan stops at the largest ladder whose models fit this machine's memory, "
                     f"{sum(p.minutes or 0.0 for p in best):.0f} of the {spec.budget_minutes:g} minutes ({e})")
            break
        if total > spec.budget_minutes:
            break
        best, top = ladder, grow(top)
    if best is None:
        raise ScaleError(f"--budget-minutes {spec.budget_minutes:g} is too small for {spec.points} points: the "
                         f"smallest {spec.ladder} ladder needs about {total:.1f} minutes here")
    return best


def check_data(points: list[Point], train_tokens: int, warn: Callable[[str], None]) -> float:
    """Epochs the largest run makes over the train split; warns past EPOCHS_WARN, refuses past EPOCHS_MAX."""
    epochs = max(p.tokens for p in points) / max(1, train_tokens)
    if epochs > EPOCHS_MAX:
        raise ScaleError(f"the data is too small for the plan: its largest run would read the {train_tokens:,} "
                         f"training tokens {epochs:.0f} times (more than {EPOCHS_MAX:.0f} epochs); use more data "
                         f"or a smaller --budget-minutes")
    if epochs > EPOCHS_WARN:
        warn(f"the largest run repeats the training data {epochs:.1f} times (more than {EPOCHS_WARN:.0f} epochs, "
             f"past which repeated tokens are worth less: the fit will overstate the loss of bigger runs)")
    return epochs
