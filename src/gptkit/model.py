"""The GPT model: a decoder-only Transformer, read top to bottom, leaf to root.

    token ids ─► wte + wpe ─► N × Block ─► (ln_f) ─► lm_head (tied to wte) ─► logits

Block is pre-LN (GPT-2/3: x = x + f(LN(x))) or post-LN (GPT-1: x = LN(x + f(x))). Attention is causal and
dense, or locally banded (GPT-3 alternates the two). Parameter names follow the GPT-2 checkpoint (`wte`, `wpe`,
`h.{i}.attn.c_attn`, `mlp.c_fc`, `ln_f`), so importing OpenAI/Hugging Face weights is a table of names.

Shapes in comments: B batch, T time (query positions), S key positions, C width n_embd, nh heads, hs head size.
This file holds no I/O, no training and no distributed code: see interop/, train.py, checkpoint.py.

The attention *kernel* is a runtime choice, not a config field (`GPT.set_attention_backend`): banded layers run
as SDPA with a boolean band mask (the reference; O(T²) whatever the band), or through flex_attention with a
block mask that skips the tiles outside the band (gptkit.flex; O(T·w)). "auto", the default, takes flex on CUDA.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .config import GPTConfig
from .cpu_attention import causal_attention
from .lm_loss import lm_loss, plain_lm_loss

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from .tokenizer import Tokenizer

ATTENTION_BACKENDS = ("auto", "sdpa", "flex")
"""Kernels for the banded layers: "sdpa" masked SDPA everywhere; "flex" flex_attention block masks wherever the
case allows (below); "auto" flex on CUDA, sdpa elsewhere. Dense layers always use SDPA (flash on GPU)."""


# ----------------------------------------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated keys and values of one attention layer, for incremental decoding.

    Row b keeps its keys/values at cache indices 0..max_len-1. Nothing is re-allocated or concatenated while
    decoding: `update` writes the new entries in place and returns views of the filled prefix.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        shape = (batch_size, n_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @classmethod
    def of(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """A cache over existing storage (e.g. a slice of a bigger cache's rows: writes land there)."""
        cache = cls.__new__(cls)
        cache.k, cache.v = k, v
        return cache

    def rows(self, first: int, last: int) -> KVCache:
        """A view of rows first..last-1 that shares this cache's storage."""
        return KVCache.of(self.k[first:last], self.v[first:last])

    def update(self, pos: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at cache indices pos..pos+T-1 and return (B, nh, S, hs) views of indices
        0..S-1, where S is one past the last index written in any row.

        `pos` is an int (every row writes at the same indices) or a LongTensor (B,) of per-row first indices.
        """
        T = k.size(2)
        if isinstance(pos, int):
            end = pos + T
            self.k[:, :, pos:end] = k
            self.v[:, :, pos:end] = v
        else:
            idx = pos[:, None] + torch.arange(T, device=pos.device)  # (B, T) cache index of each new entry
            rows = torch.arange(k.size(0), device=pos.device)[:, None]  # (B, 1)
            self.k[rows, :, idx] = k.transpose(1, 2)  # advanced indexing puts (B, T) first: (B, T, nh, hs)
            self.v[rows, :, idx] = v.transpose(1, 2)
            end = int(pos.max()) + T
        return self.k[:, :, :end], self.v[:, :, :end]


def attention_mask(q_idx: torch.Tensor, k_len: int, window: int | None,
                   start: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (B, 1, T, S) mask, True where attention is allowed (B may be 1: it broadcasts).

    q_idx (B, T) or (1, T) holds the cache index of each query; keys are cache indices 0..k_len-1. Query q sees
    key j when j <= q (causal), q - j < window (banded layers: the last `window` positions, itself included),
    and j >= start[b] (left padding: row b's sequence begins at index start[b]). A padding query (q < start[b])
    sees only itself, so its row stays finite: nothing real ever attends to it.
    """
    k_idx = torch.arange(k_len, device=q_idx.device)  # (S,)
    q = q_idx[:, :, None]  # (B, T, 1)
    mask = k_idx <= q
    if window is not None:
        mask = mask & (q - k_idx < window)
    if start is not None:
        mask = mask & ((k_idx >= start[:, None, None]) | (k_idx == q))
    return mask[:, None]  # (B, 1, T, S): the same mask for every head


# ------------------------------------------------------------------------------------------- the layers
class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention (Vaswani et al. 2017 §3.2), through F.scaled_dot_product_attention."""

    def __init__(self, config: GPTConfig, banded: bool = False) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.head_size
        self.window = config.band_width if banded else None
        self.attn_pdrop = config.attn_pdrop
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # output projection
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, pos: int | torch.Tensor = 0,
                mask: torch.Tensor | BlockMask | None = None) -> torch.Tensor:
        """x (B, T, C) → (B, T, C). `mask` comes from GPTBackbone: a boolean (B|1, 1, T, S) tensor; a flex
        BlockMask (a banded layer on the fast path); or None, plain causal attention where the T queries are
        the last T of the S keys."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_size)  # q, k, v side by side
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs); few ops: decoding is per token
        if kv_cache is not None:
            k, v = kv_cache.update(pos, k, v)  # (B, nh, S, hs), S = pos + T
        dropout = self.attn_pdrop if self.training else 0.0
        if isinstance(mask, torch.Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif mask is not None:  # a BlockMask: only built when attention dropout is off (flex has none)
            from .flex import flex_attention

            y = flex_attention(q, k, v, mask)
        else:  # T == S (no cache, or a cache filled from 0) or T == 1 (one new token sees every key)
            y = causal_attention(q, k, v, dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear(d → 4d) → GELU → Linear(4d → d)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.act = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """One Transformer layer. ln_1 belongs to attention and ln_2 to the MLP in both norm placements."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, banded=config.layer_is_banded(layer))
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, pos: int | torch.Tensor = 0,
                mask: torch.Tensor | BlockMask | None = None) -> torch.Tensor:
        if self.pre_norm:  # GPT-2 §2.3
            x = x + self.attn(self.ln_1(x), kv_cache, pos, mask)
            x = x + self.mlp(self.ln_2(x))
        else:  # GPT-1, the original Transformer
            x = self.ln_1(x + self.attn(x, kv_cache, pos, mask))
            x = self.ln_2(x + self.mlp(x))
        return x


def sinusoidal_positions(n_pos: int, dim: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))  (Vaswani et al. 2017 §3.5)."""
    pos = torch.arange(n_pos, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (d/2,)
    pe = torch.zeros(n_pos, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)
    return pe.float()


# -------------------------------------------------------------------------------------------- the model
class GPTBackbone(nn.Module):
    """The headless Transformer: token ids (B, T) → final hidden states (B, T, C).

    Fine-tuning heads (GPT-1 §3.2) sit on these hidden states; the language-model head is `GPT.lm_head`.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            self.register_buffer("pos_table", sinusoidal_positions(config.block_size, config.n_embd),
                                 persistent=False)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias) \
            if config.final_norm else nn.Identity()
        self.attention_backend = "auto"  # runtime, not config: see GPT.set_attention_backend

    def flex_banded(self, device: torch.device) -> bool:
        """Whether banded layers may use flex_attention in this forward (the backend asks for it and attention
        dropout is off). GPTBackbone.forward also needs the common case: no cache, no per-row positions."""
        if self.attention_backend == "sdpa" or (self.attention_backend == "auto" and device.type != "cuda"):
            return False
        return not (self.training and self.config.attn_pdrop > 0)

    def forward(self, idx: torch.Tensor, kv_caches: list[KVCache] | None = None, pos: int | torch.Tensor = 0,
                start: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) → hidden states (B, T, C).

        Without a cache, or with `pos` an int and no `start`, every row holds one sequence from index 0 and the
        new tokens sit at positions pos..pos+T-1. Batched decoding of sequences of different lengths passes
        `pos`, a LongTensor (B,) of per-row cache indices for idx[:, 0], and/or `start` (B,), the cache index
        where row b's sequence begins (left padding before it is masked out). Position ids are cache index
        minus start, so a left-padded prompt gets the same positions as it would alone.
        """
        B, T = idx.shape
        windows = {block.attn.window for block in self.h}
        if isinstance(pos, int) and start is None:  # the common case: no per-row bookkeeping
            if pos + T > self.config.block_size:
                raise ValueError(f"sequence of {pos + T} tokens is longer than the context ({self.config.block_size})")
            positions = torch.arange(pos, pos + T, device=idx.device)  # (T,)
            # dense layers need no mask when the queries are all keys (is_causal) or a single newest token
            plain = T == 1 or pos == 0
            q_idx = positions[None]  # (1, T)
            # banded layers over a whole sequence (training, scoring) may take flex; decoding keeps masked SDPA
            flex = kv_caches is None and pos == 0 and windows != {None} and self.flex_banded(idx.device)
            masks = {w: None if w is None and plain else attention_mask(q_idx, pos + T, w)
                     for w in windows if w is None or not flex}
            if flex:
                from .flex import banded_block_mask

                masks.update({w: banded_block_mask(T, T, w, idx.device) for w in windows if w is not None})
        else:
            first = pos if isinstance(pos, torch.Tensor) else torch.full((B,), pos, device=idx.device)
            q_idx = first[:, None] + torch.arange(T, device=idx.device)  # (B, T) cache index of each token
            positions = q_idx - start[:, None] if start is not None else q_idx  # (B, T)
            if int(positions.max()) >= self.config.block_size:
                raise ValueError(f"sequence of {int(positions.max()) + 1} tokens is longer than the context "
                                 f"({self.config.block_size})")
            positions = positions.clamp(min=0)  # left padding has negative positions; its tokens are masked
            k_len = int(q_idx.max()) + 1
            masks = {w: attention_mask(q_idx, k_len, w, start) for w in windows}
        pos_emb = self.wpe(positions) if self.config.pos == "learned" else self.pos_table[positions]
        x = self.drop(self.wte(idx) + pos_emb)  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, kv_caches[i] if kv_caches is not None else None, pos, masks[block.attn.window])
        return self.ln_f(x)


class GPT(nn.Module):
    """A GPT language model: backbone + a linear map to the vocabulary (tied to the token embedding)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPTBackbone(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.kv_caches: list[KVCache] | None = None
        self.tokenizer: Tokenizer | None = None  # attached by from_pretrained when the checkpoint has one
        self.apply(self._init_weights)
        if config.scaled_residual_init:  # GPT-2 §2.3: scale residual-path weights by 1/sqrt(N), N = 2 per layer
            std = config.init_std / math.sqrt(2 * config.n_layer)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def reset_buffers_and_ties(self) -> None:
        """Re-tie the output head and recompute fixed buffers: needed after building on the meta device and
        moving with `to_empty` (which allocates fresh, uninitialised storage for every tensor)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if self.config.pos == "sinusoidal":
            table = sinusoidal_positions(self.config.block_size, self.config.n_embd)
            self.transformer.pos_table = table.to(self.transformer.pos_table.device)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPT:
        return cls(GPTConfig.from_preset(name, **overrides))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> GPT:
        """Load a gptkit checkpoint, a training run directory (its latest checkpoint), or a Hugging Face
        GPT2 / OpenAIGPT directory. The I/O lives in gptkit.checkpoint."""
        from .checkpoint import load_model

        return load_model(path, map_location=map_location)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write a gptkit checkpoint: model.safetensors + config.json (+ the tokenizer when one is attached)."""
        from .checkpoint import save_model

        save_model(self, directory, tokenizer=self.tokenizer)

    # -------------------------------------------------------------------------------------- forward
    def forward(self, idx: torch.Tensor, pos: int | torch.Tensor = 0, start: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids → logits (B, T, vocab_size) for every position; with `targets` (B, T), the mean
        cross-entropy against them instead (a scalar, float32 or wider). Under autocast the output projection is
        fused with it in chunks of rows (gptkit.lm_loss), so no float32 logits tensor is ever stored whole; in
        float32 the fused way was not reliably faster (docs/benchmarks.md), and the plain way is kept.

        With a KV cache set up (`setup_kv_cache`), `pos` is the cache index of idx[:, 0] and the keys/values of
        indices < pos come from the cache. `pos` (B,) and `start` (B,) as tensors serve batches of sequences of
        different lengths (see GPTBackbone.forward).
        """
        hidden = self.transformer(idx, self.kv_caches, pos, start)
        if targets is None:
            return self.lm_head(hidden)
        return self.lm_head_loss(hidden, targets)

    def lm_head_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the LM head's logits of final hidden states (..., C) against `targets` (...):
        the loss of `forward(idx, targets=...)`, also the auxiliary loss L1 of fine-tuning."""
        if torch.is_autocast_enabled(hidden.device.type):  # fused: 1.0-2.0x faster, 1/8 of the memory (bf16)
            return lm_loss(hidden, self.lm_head.weight, targets)
        return plain_lm_loss(hidden, self.lm_head.weight, targets)  # float32: fused measured 0.90-1.26x

    def set_attention_backend(self, backend: str) -> GPT:
        """Choose the banded layers' attention kernel at runtime (one of ATTENTION_BACKENDS); returns self.

        "flex" (and "auto" on CUDA) runs flex_attention with a block mask when the whole sequence is computed at
        once, as in training and scoring: no KV cache, no per-row positions or left padding, no attention dropout
        in training. Everything else (decoding, padded batches, dropout) takes the masked SDPA path, which gives
        the same results. torch 2.13 has no flex_attention backward on CPU: there "flex" is for no-grad use."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")
        self.transformer.attention_backend = backend
        return self

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, C) — what fine-tuning heads read."""
        return self.transformer(idx)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------------- decoding
    def setup_kv_cache(self, batch_size: int, max_len: int | None = None) -> None:
        """Allocate one KVCache per layer (cleared with `clear_kv_cache`)."""
        p = self.transformer.wte.weight
        max_len = min(max_len or self.config.block_size, self.config.block_size)
        self.kv_caches = [KVCache(batch_size, self.config.n_head, max_len, self.config.head_size,
                                  device=p.device, dtype=p.dtype) for _ in range(self.config.n_layer)]

    def clear_kv_cache(self) -> None:
        self.kv_caches = None

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

        temperature 0 is greedy decoding. See gptkit.generate for the sampling rules.
        """
        from .generate import generate

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        generator=generator, use_cache=use_cache)


# ------------------------------------------------------------------------------- built without storage
_INITIALISERS = frozenset((nn.init.normal_, nn.init.uniform_, nn.init.kaiming_uniform_, nn.init.zeros_,
                           nn.init.ones_, nn.init.constant_, nn.init.trunc_normal_))
"""The torch.nn.init functions that GPT's layers and `GPT._init_weights` call while they are built."""


class _InitialisersSkipped(TorchFunctionMode):
    """Within it, torch.nn.init's initialisers return their tensor untouched: in this thread only (torch's
    function modes are per thread), so a model initialised elsewhere at the same time is not affected."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INITIALISERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def meta_model(config: GPTConfig) -> GPT:
    """A GPT whose tensors live on the meta device (shapes and dtypes, no storage), for loaded or sharded weights
    to fill (`empty_model`; FSDP shards it first). Its initialisers are skipped: on the meta device they
    compute nothing, and torch runs a meta tensor's `normal_` through Python reference code whose first call
    imports torch._dynamo, a second of every `gptkit sample` or `serve` start on a CPU that never compiles."""
    with torch.device("meta"), _InitialisersSkipped():  # entered last, asked first
        return GPT(config)


def empty_model(config: GPTConfig, device: str | torch.device = "cpu") -> GPT:
    """A GPT with uninitialised storage on `device`, for loaded weights to fill: `meta_model`, then each tensor
    allocated by torch.empty and the output head tied again. (Module.to_empty would allocate with empty_like of
    each meta tensor, which runs Python reference code that imports sympy: 0.3 s of every load.)"""
    model = meta_model(config)
    model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))  # what to_empty does, cheaper
    model.reset_buffers_and_ties()
    return model
