"""The GPT model: a decoder-only Transformer, read top to bottom, leaf to root.

    token ids ─► wte + wpe ─► N × Block ─► (ln_f) ─► lm_head (tied to wte) ─► logits

Block is pre-LN (GPT-2/3: x = x + f(LN(x))) or post-LN (GPT-1: x = LN(x + f(x))). Attention is causal and
dense, or locally banded (GPT-3 alternates the two). Parameter names follow the GPT-2 checkpoint (`wte`, `wpe`,
`h.{i}.attn.c_attn`, `mlp.c_fc`, `ln_f`), so importing OpenAI/Hugging Face weights is a table of names.

Shapes in comments: B batch, T time (query positions), S key positions, C width n_embd, nh heads, hs head size.
This file holds no I/O, no training and no distributed code: see interop/, train.py, checkpoint.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


# ----------------------------------------------------------------------------------------------- KV cache
class KVCache(nn.Module):
    """Preallocated keys and values of one attention layer, for incremental decoding.

    `update(pos, k, v)` writes the new keys/values at positions pos..pos+T-1 and returns views of all
    positions written so far, 0..pos+T-1.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = pos + k.size(2)
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


def attention_mask(q_len: int, k_len: int, window: int | None, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True where attention is allowed.

    Queries are the last q_len of the k_len positions. Query i (absolute position k_len - q_len + i) sees key j
    when j <= i (causal) and, for a banded layer, when i - j < window (the last `window` positions, itself included).
    """
    q_pos = torch.arange(k_len - q_len, k_len, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(k_len, device=device).unsqueeze(0)  # (1, S)
    mask = k_pos <= q_pos
    if window is not None:
        mask &= (q_pos - k_pos) < window
    return mask


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

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(pos, k, v)  # (B, nh, S, hs), S = pos + T
        S = k.size(2)
        dropout = self.attn_pdrop if self.training else 0.0
        if self.window is None and T == S:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif self.window is None and T == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # one new token sees all S keys
        else:
            mask = attention_mask(T, S, self.window, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
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

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, pos: int = 0) -> torch.Tensor:
        if self.pre_norm:  # GPT-2 §2.3
            x = x + self.attn(self.ln_1(x), kv_cache, pos)
            x = x + self.mlp(self.ln_2(x))
        else:  # GPT-1, the original Transformer
            x = self.ln_1(x + self.attn(x, kv_cache, pos))
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

    def forward(self, idx: torch.Tensor, kv_caches: list[KVCache] | None = None, pos: int = 0) -> torch.Tensor:
        B, T = idx.shape
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of {pos + T} tokens is longer than the context ({self.config.block_size})")
        positions = torch.arange(pos, pos + T, device=idx.device)  # (T,)
        pos_emb = self.wpe(positions) if self.config.pos == "learned" else self.pos_table[positions]
        x = self.drop(self.wte(idx) + pos_emb)  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, kv_caches[i] if kv_caches is not None else None, pos)
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
    def forward(self, idx: torch.Tensor, pos: int = 0) -> torch.Tensor:
        """idx (B, T) token ids → logits (B, T, vocab_size) for every position.

        With a KV cache set up (`setup_kv_cache`), `pos` is the position of idx[:, 0] and the keys/values of
        positions < pos come from the cache.
        """
        return self.lm_head(self.transformer(idx, self.kv_caches, pos))

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
