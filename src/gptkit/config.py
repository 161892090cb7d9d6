"""GPTConfig: the architecture of one GPT, as a frozen dataclass, plus the named presets.

Every variant of the family is a choice of fields, never a model name: GPT-1 is `norm="post"` without a final
LayerNorm, GPT-2 is `norm="pre"` with one, GPT-3 is GPT-2 with `attention="alternating"`. Derived quantities
(parameter counts, FLOPs per token) are properties so they can never disagree with the fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import GptkitError

Norm = Literal["pre", "post"]
Pos = Literal["learned", "sinusoidal"]
Gelu = Literal["tanh", "exact"]
Attention = Literal["dense", "banded", "alternating"]


class ConfigError(GptkitError, ValueError):
    """A configuration that cannot describe a model (raised with a one-line, user-facing message)."""


# ------------------------------------------------------------------------------------ what each field may hold
def _show(value: Any) -> str:
    """A field's value as its config.json spells it (null, true, "x"), cut short when long."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _real(value: Any) -> float | None:
    """`value` as a finite float when it is a real number (an int is one, a bool is not), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        x = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return x if math.isfinite(x) else None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _choice(kind: Any) -> tuple[str, Callable[[Any], bool]]:
    allowed = get_args(kind)
    return f"one of {', '.join(allowed)}", lambda v: isinstance(v, str) and v in allowed


_POSITIVE_INT = ("a positive integer", _positive_int)
_PROBABILITY = ("a number in [0, 1)", lambda v: (x := _real(v)) is not None and 0.0 <= x < 1.0)
_BOOL = ("true or false", lambda v: isinstance(v, bool))

FIELD_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **dict.fromkeys(("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "band_width"), _POSITIVE_INT),
    "n_inner": ("a positive integer or null", lambda v: v is None or _positive_int(v)),
    **dict.fromkeys(("embd_pdrop", "attn_pdrop", "resid_pdrop"), _PROBABILITY),
    **dict.fromkeys(("bias", "final_norm", "tie_embeddings", "scaled_residual_init"), _BOOL),
    "norm": _choice(Norm), "pos": _choice(Pos), "gelu": _choice(Gelu), "attention": _choice(Attention),
    "layer_norm_eps": ("a positive number", lambda v: (x := _real(v)) is not None and x > 0.0),
    "init_std": ("a number >= 0", lambda v: (x := _real(v)) is not None and x >= 0.0),
}
"""Each GPTConfig field: what it must be (for the message) and the check. Booleans are not integers here, and an
integer passes where a number is asked for."""


def field_problem(name: str, value: Any, label: str | None = None) -> str | None:
    """Why `value` cannot be GPTConfig field `name` (a message naming it `label`, e.g. the Hugging Face key), or
    None when it can."""
    what, ok = FIELD_RULES[name]
    return None if ok(value) else f"{label or name} must be {what}, got {_show(value)}"


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    """Number of token ids, including special tokens."""
    block_size: int = 1024
    """Context length: the most positions the model sees at once."""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    """Model width d_model (also the attention width: heads × head size)."""
    n_inner: int | None = None
    """MLP hidden size; None means 4 · n_embd, as in all three papers."""
    embd_pdrop: float = 0.0
    """Dropout on the sum of token and position embeddings."""
    attn_pdrop: float = 0.0
    """Dropout on the attention probabilities."""
    resid_pdrop: float = 0.0
    """Dropout on each sublayer's output before it joins the residual stream."""
    bias: bool = True
    """Biases in the linear layers and LayerNorms (all GPTs have them)."""
    norm: Norm = "pre"
    """'post': x = LN(x + f(x)) (GPT-1, the original Transformer); 'pre': x = x + f(LN(x)) (GPT-2, GPT-3)."""
    final_norm: bool = True
    """A LayerNorm after the last block (GPT-2 §2.3 added it; GPT-1 has none)."""
    pos: Pos = "learned"
    """'learned' position embeddings (GPT-1/2/3) or the fixed sinusoids of Vaswani et al. (2017)."""
    gelu: Gelu = "tanh"
    """GELU form: the tanh approximation used by the OpenAI code, or the exact erf form."""
    attention: Attention = "dense"
    """'dense' causal attention everywhere, 'banded' (local window) everywhere, or GPT-3's 'alternating'."""
    band_width: int = 256
    """Local window for banded layers: position i attends to i-band_width+1 .. i."""
    tie_embeddings: bool = True
    """The output projection shares the token-embedding matrix."""
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    """Weights ~ N(0, init_std) (GPT-1 §4.1)."""
    scaled_residual_init: bool = True
    """Residual projections ~ N(0, init_std / sqrt(2 · n_layer)) (GPT-2 §2.3)."""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        for f in dataclasses.fields(self):
            problem = field_problem(f.name, getattr(self, f.name))
            if problem:
                raise ConfigError(problem)
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"choose a head count that divides the width"
            )
        if self.pos == "sinusoidal" and self.n_embd % 2:
            raise ConfigError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")

    # ------------------------------------------------------------- derived values
    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def layer_is_banded(self, layer: int) -> bool:
        """GPT-3 §2.1: 'alternating dense and locally banded sparse attention patterns in the layers'.
        We make the even layers (0, 2, ...) dense and the odd ones banded."""
        if self.attention == "banded":
            return True
        return self.attention == "alternating" and layer % 2 == 1

    @property
    def params_per_block(self) -> int:
        d, h, b = self.n_embd, self.mlp_hidden, int(self.bias)
        attn = d * 3 * d + b * 3 * d + d * d + b * d
        mlp = d * h + b * h + h * d + b * d
        norms = 2 * (d + b * d)
        return attn + mlp + norms

    @property
    def embedding_params(self) -> int:
        """Token embedding plus learned position embedding (sinusoids are not parameters)."""
        wpe = self.block_size * self.n_embd if self.pos == "learned" else 0
        return self.vocab_size * self.n_embd + wpe

    @property
    def non_embedding_params(self) -> int:
        """Parameters excluding the embeddings, the N of Kaplan et al. (2020) scaling laws.
        An untied output head counts as a non-embedding parameter (it is a real matmul)."""
        d, b = self.n_embd, int(self.bias)
        final = (d + b * d) if self.final_norm else 0
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.n_layer * self.params_per_block + final + head

    @property
    def num_params(self) -> int:
        return self.embedding_params + self.non_embedding_params

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward = 3 × forward).

        6·N for every weight matmul, where N counts the blocks and the vocabulary projection (the position
        embedding is a lookup, no FLOPs), plus the attention term 12·L·d·T for QKᵀ and attention·V
        (Kaplan et al. 2020 Table 1; PaLM App. B), counted as dense over the full context T.
        """
        t = seq_len or self.block_size
        matmul_params = self.n_layer * self.params_per_block + self.vocab_size * self.n_embd
        return 6 * matmul_params + 12 * self.n_layer * self.n_embd * t

    # -------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"the model config must be an object of GPTConfig fields, got {_show(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ConfigError(f"unknown GPTConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


# --------------------------------------------------------------------------- presets
# GPT-1 (Radford et al. 2018 §4.1): 12 layers, 768 wide, 12 heads, 3072 MLP, context 512, post-LN, no final LN,
# 40,478 BPE tokens (40,000 merges + 478 base symbols). HF's openai-gpt checkpoint has 116,534,784 parameters.
_GPT1 = GPTConfig(vocab_size=40478, block_size=512, n_layer=12, n_head=12, n_embd=768,
                  embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1, norm="post", final_norm=False,
                  scaled_residual_init=False)

# GPT-2 (Radford et al. 2019 §2.3, Table 2): pre-LN, final LN, scaled residual init, vocabulary 50,257,
# context 1024. Sizes as in the released checkpoints (124M is the "117M" of the paper).
_GPT2 = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                  embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1)


def _gpt3(n_layer: int, n_embd: int, n_head: int) -> GPTConfig:
    # GPT-3 (Brown et al. 2020 §2.1, Table 2.1): GPT-2's architecture with alternating dense and locally banded
    # attention, context 2048. The dropout of the GPT-3 runs is not reported; we keep GPT-2's 0.1 off by default.
    return GPTConfig(vocab_size=50257, block_size=2048, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     attention="alternating", band_width=256)


PRESETS: dict[str, GPTConfig] = {
    "gpt1": _GPT1,
    "gpt2": _GPT2,
    "gpt2-medium": dataclasses.replace(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dataclasses.replace(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dataclasses.replace(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    # Table 2.1 lists d_head = 128 for every size, which cannot hold for 1.3B (24 × 128 ≠ 2048) or 13B
    # (5140 / 40 is not whole). Its parameter counts assume the attention width equals d_model, so we keep
    # d_model and choose a head count that divides it (noted where it differs from the table).
    "gpt3-small": _gpt3(12, 768, 12),
    "gpt3-medium": _gpt3(24, 1024, 16),
    "gpt3-large": _gpt3(24, 1536, 16),
    "gpt3-xl": _gpt3(24, 2048, 16),  # table: 24 heads; 16 heads of 128 keeps d_head = 128
    "gpt3-2.7b": _gpt3(32, 2560, 32),  # d_head 80
    "gpt3-6.7b": _gpt3(32, 4096, 32),
    "gpt3-13b": _gpt3(40, 5140, 20),  # table: 40 heads; 5140 = 20 × 257 is the closest divisor
    "gpt3-175b": _gpt3(96, 12288, 96),
    # Small models for CPU work. gpt-micro is nanoGPT's documented CPU recipe shape (4 × 4 × 128, context 64).
    # They use the exact (erf) GELU: on CPU, PyTorch's tanh-approximation kernel is much slower (fwd + bwd),
    # measured in docs/benchmarks.md; the GPT-2 presets keep the tanh form their checkpoints were trained with.
    "gpt-nano": GPTConfig(vocab_size=50257, block_size=128, n_layer=3, n_head=3, n_embd=48, gelu="exact"),
    "gpt-micro": GPTConfig(vocab_size=50257, block_size=64, n_layer=4, n_head=4, n_embd=128, gelu="exact"),
    "gpt-mini": GPTConfig(vocab_size=50257, block_size=256, n_layer=6, n_head=6, n_embd=192, gelu="exact"),
    "gpt-small-cpu": GPTConfig(vocab_size=50257, block_size=256, n_layer=6, n_head=6, n_embd=384, gelu="exact"),
}

# GPT-3 Table 2.1 sizes, for tests and `gptkit info`.
GPT3_PAPER_PARAMS = {
    "gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13.0e9, "gpt3-175b": 175.0e9,
}
