"""GPTConfig: parameter counts against the real checkpoints, the GPT-3 paper, and transformers' own models;
FLOPs against an independent per-operation count; validation and immutability."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import functools
import math

import pytest
import torch

from gptkit import PRESETS, GPTConfig, GptkitError
from gptkit.config import GPT3_PAPER_PARAMS, ConfigError
from gptkit.model import meta_model

# Parameter counts of the released checkpoints (transformers' openai-gpt, gpt2, gpt2-medium/large/xl).
REAL_PARAMS = {
    "gpt1": 116_534_784,
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


def unique_param_count(model: torch.nn.Module) -> int:
    seen, n = set(), 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


# ------------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("name", list(REAL_PARAMS))
def test_config_param_count_equals_released_checkpoint(name):
    assert GPTConfig.from_preset(name).num_params == REAL_PARAMS[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_model_on_meta_has_exactly_the_config_param_count(name):
    cfg = GPTConfig.from_preset(name)
    model = meta_model(cfg)
    n = unique_param_count(model)
    assert n == cfg.num_params == model.num_params
    if name in REAL_PARAMS:
        assert n == REAL_PARAMS[name]
    # non-embedding = everything but the token and (learned) position tables
    emb = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert n - emb == cfg.non_embedding_params
    # the head is tied: one matrix, not two
    assert model.lm_head.weight is model.transformer.wte.weight


def _hf_oracle_count(name: str) -> int:
    transformers = pytest.importorskip("transformers")
    if name == "gpt1":
        hf_cfg = transformers.OpenAIGPTConfig()  # defaults are openai-gpt: 40478 × 768, 12 × 12, context 512
        cls = transformers.OpenAIGPTLMHeadModel
    else:
        c = PRESETS[name]
        hf_cfg = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                         n_layer=c.n_layer, n_head=c.n_head)
        cls = transformers.GPT2LMHeadModel
    with torch.device("meta"):
        hf = cls(hf_cfg)
    return unique_param_count(hf)


@pytest.mark.parametrize("name", list(REAL_PARAMS))
def test_param_count_matches_transformers_models(name):
    assert _hf_oracle_count(name) == GPTConfig.from_preset(name).num_params == REAL_PARAMS[name]


@pytest.mark.parametrize("name", list(GPT3_PAPER_PARAMS))
def test_gpt3_presets_within_2_percent_of_paper(name):
    cfg = GPTConfig.from_preset(name)
    paper = GPT3_PAPER_PARAMS[name]
    assert abs(cfg.num_params / paper - 1) < 0.02, (name, cfg.num_params, paper)
    assert cfg.vocab_size == 50257
    assert cfg.block_size == 2048
    assert cfg.attention == "alternating" and cfg.norm == "pre" and cfg.final_norm
    # attention width = d_model (the table's parameter counts assume it)
    assert cfg.n_head * cfg.head_size == cfg.n_embd
    # even layers dense, odd layers banded
    assert [cfg.layer_is_banded(i) for i in range(4)] == [False, True, False, True]


def test_paper_shapes():
    g1 = PRESETS["gpt1"]
    assert (g1.n_layer, g1.n_embd, g1.n_head, g1.block_size, g1.vocab_size) == (12, 768, 12, 512, 40478)
    assert g1.norm == "post" and not g1.final_norm and g1.mlp_hidden == 3072
    for name, (L, d) in {"gpt2": (12, 768), "gpt2-medium": (24, 1024), "gpt2-large": (36, 1280),
                         "gpt2-xl": (48, 1600)}.items():
        c = PRESETS[name]
        assert (c.n_layer, c.n_embd, c.block_size, c.vocab_size, c.norm, c.final_norm) == \
            (L, d, 1024, 50257, "pre", True)
        assert c.n_embd // c.n_head == 64  # all released GPT-2 models have 64-wide heads
    assert [PRESETS[n].layer_is_banded(0) for n in ("gpt2", "gpt1")] == [False, False]
    assert PRESETS["gpt3-175b"].n_layer == 96 and PRESETS["gpt3-175b"].n_embd == 12288


# ------------------------------------------------------------------------------------ derived quantities
@pytest.mark.parametrize("name", list(PRESETS))
def test_non_embedding_params_near_kaplan_approximation(name):
    # Kaplan et al. (2020): N ≈ 2·d·L·(2·d_attn + d_ff) = 12·L·d² for d_ff = 4d; biases and LN add ~13·L·d.
    c = PRESETS[name]
    approx = 2 * c.n_embd * c.n_layer * (2 * c.n_embd + c.mlp_hidden)
    exact_extra = c.n_layer * 13 * c.n_embd + (2 * c.n_embd if c.final_norm else 0)
    assert c.non_embedding_params == approx + exact_extra


@functools.lru_cache(maxsize=None)
def _block_params(c: GPTConfig) -> int:
    return sum(p.numel() for p in meta_model(c).transformer.h.parameters())


def _independent_train_flops(c: GPTConfig, T: int) -> tuple[int, int]:
    """Per-operation forward count, ×3 for training. Returns (weights-only count, count with every
    parameter of a block charged 2 FLOPs as in 6N)."""
    d, h, V, L = c.n_embd, c.mlp_hidden, c.vocab_size, c.n_layer
    per_layer = (2 * d * 3 * d  # q, k, v projections
                 + 2 * T * d  # q·kᵀ over T keys (counted dense, as the docstring says)
                 + 2 * T * d  # attention · v
                 + 2 * d * d  # output projection
                 + 2 * d * h + 2 * h * d)  # MLP
    fwd = L * per_layer + 2 * d * V  # + the vocabulary projection
    weights_only = 3 * fwd
    # gptkit charges biases and LN gains as if they were matmul weights (6N): recompute exactly that way
    block_params = _block_params(c)
    six_n = 6 * (block_params + V * d) + 12 * L * d * T
    return weights_only, six_n


@pytest.mark.parametrize("name", ["gpt1", "gpt2", "gpt2-xl", "gpt3-small", "gpt3-175b", "gpt-nano"])
def test_flops_per_token_vs_independent_count(name):
    c = PRESETS[name]
    for T in (None, 128, 1):
        got = c.flops_per_token(T) if T else c.flops_per_token()
        weights_only, six_n = _independent_train_flops(c, T or c.block_size)
        assert got == six_n
        assert abs(got / weights_only - 1) < 2e-3  # biases/LN are a rounding error of the matmuls
    # linear in the sequence length with slope 12·L·d
    assert c.flops_per_token(200) - c.flops_per_token(100) == 12 * c.n_layer * c.n_embd * 100


def test_gpt3_175b_training_compute_matches_paper():
    # GPT-3 Table D.1: 175B trained on 300B tokens took 3.14e23 FLOPs (6N per token, attention ignored).
    total = PRESETS["gpt3-175b"].flops_per_token() * 300e9
    assert abs(total / 3.14e23 - 1) < 0.05


def test_untied_head_counts_as_non_embedding():
    c = dataclasses.replace(PRESETS["gpt-nano"], tie_embeddings=False)
    model = meta_model(c)
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert unique_param_count(model) == c.num_params == PRESETS["gpt-nano"].num_params + c.vocab_size * c.n_embd
    assert c.non_embedding_params == PRESETS["gpt-nano"].non_embedding_params + c.vocab_size * c.n_embd


def test_sinusoidal_positions_are_not_parameters():
    c = dataclasses.replace(PRESETS["gpt-nano"], pos="sinusoidal")
    assert unique_param_count(meta_model(c)) == c.num_params == PRESETS["gpt-nano"].num_params - c.block_size * c.n_embd


def test_no_bias_count():
    c = dataclasses.replace(PRESETS["gpt-nano"], bias=False)
    assert unique_param_count(meta_model(c)) == c.num_params


# ------------------------------------------------------------------------------ immutability, validation
def test_replace_makes_variants_and_leaves_original_alone():
    base = GPTConfig.from_preset("gpt2")
    v = dataclasses.replace(base, n_layer=2, attention="banded", band_width=8)
    assert (v.n_layer, v.attention, v.band_width) == (2, "banded", 8)
    assert (base.n_layer, base.attention) == (12, "dense")
    assert GPTConfig.from_preset("gpt2", n_layer=3).n_layer == 3
    assert PRESETS["gpt2"].n_layer == 12  # presets are not mutated by overrides


def test_config_is_frozen():
    c = GPTConfig.from_preset("gpt2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_layer = 3  # type: ignore[misc]


def test_round_trip_dict_and_json():
    import json

    c = dataclasses.replace(PRESETS["gpt1"], n_inner=100, pos="sinusoidal", gelu="exact")
    assert GPTConfig.from_dict(c.to_dict()) == c
    assert GPTConfig.from_dict(json.loads(c.to_json())) == c


def test_width_not_divisible_by_heads():
    with pytest.raises(ConfigError) as e:
        GPTConfig(n_embd=50, n_head=3)
    msg = str(e.value)
    assert "n_embd (50)" in msg and "n_head (3)" in msg and "divisible" in msg
    assert "\n" not in msg
    # via replace too (replace re-runs validation)
    with pytest.raises(ConfigError, match="divisible"):
        dataclasses.replace(PRESETS["gpt2"], n_head=7)
    # a user-facing error: part of the GptkitError family, and a ValueError
    assert issubclass(ConfigError, GptkitError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("bad, match", [
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(block_size=2.5), "block_size"),
    (dict(n_inner=0), "n_inner"),
    (dict(band_width=0), "band_width"),
    (dict(attn_pdrop=1.0), "attn_pdrop"),
    (dict(embd_pdrop=-0.1), "embd_pdrop"),
    (dict(norm="middle"), "norm must be one of pre, post"),
    (dict(attention="sparse"), "attention must be one of"),
    (dict(pos="rotary"), "pos must be one of"),
    (dict(gelu="relu"), "gelu must be one of"),
    (dict(pos="sinusoidal", n_embd=51, n_head=3), "even n_embd"),
])
def test_validation_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**bad)


def test_unknown_preset_and_fields():
    with pytest.raises(ConfigError, match="unknown preset 'gpt5'.*gpt2-medium"):
        GPTConfig.from_preset("gpt5")
    with pytest.raises(ConfigError, match="unknown GPTConfig field.*n_embed"):
        GPTConfig.from_dict({**PRESETS["gpt2"].to_dict(), "n_embed": 3})


def test_head_size_and_mlp_hidden():
    c = GPTConfig(n_embd=60, n_head=5, n_inner=None)
    assert c.head_size == 12 and c.mlp_hidden == 240
    assert dataclasses.replace(c, n_inner=100).mlp_hidden == 100
    assert math.isclose(PRESETS["gpt3-2.7b"].head_size, 80)
