"""Hugging Face interop: read GPT2 / OpenAIGPT directories, write directories transformers loads.

Because gptkit's parameter names follow the GPT-2 checkpoint, conversion is a table of names plus one rule:
HF stores the linear layers of both models as `Conv1D`, whose weight is (in, out) — the transpose of
`nn.Linear`'s (out, in).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import CONFIG, build_model, model_state_dict, read_state_dict, resolve_checkpoint
from ..config import ConfigError, GPTConfig, field_problem
from ..errors import CheckpointError
from ..io import new_tmp_dir, parse_json, publish_dir
from ..tokenizer import write_chat_template

if TYPE_CHECKING:
    from ..model import GPT
    from ..tokenizer import Tokenizer

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# gptkit name → HF name, per model type (block-level names are identical in all three).
TOP_LEVEL = {
    "gpt2": {"transformer.wte.weight": "transformer.wte.weight", "transformer.wpe.weight": "transformer.wpe.weight",
             "transformer.ln_f.weight": "transformer.ln_f.weight", "transformer.ln_f.bias": "transformer.ln_f.bias"},
    "openai-gpt": {"transformer.wte.weight": "transformer.tokens_embed.weight",
                   "transformer.wpe.weight": "transformer.positions_embed.weight"},
}
# HF buffers and non-weights that may appear in checkpoints and carry nothing we need
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "position_ids")
# heads beside the LM head: GPT2DoubleHeadsModel / OpenAIGPTDoubleHeadsModel add GPT-1's multiple-choice head
# (a linear `summary` on the extract token's state); gptkit loads the language model only
IGNORED_PREFIXES = ("multiple_choice_head.",)

GELU_FROM_HF = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "exact"}

REQUIRED = object()
# HF config.json key → (GPTConfig field, the value transformers assumes when the key is absent)
FIELDS_FROM_HF = {"vocab_size": ("vocab_size", REQUIRED), "n_positions": ("block_size", REQUIRED),
                  "n_layer": ("n_layer", REQUIRED), "n_head": ("n_head", REQUIRED), "n_embd": ("n_embd", REQUIRED),
                  "embd_pdrop": ("embd_pdrop", 0.1), "attn_pdrop": ("attn_pdrop", 0.1),
                  "resid_pdrop": ("resid_pdrop", 0.1), "layer_norm_epsilon": ("layer_norm_eps", 1e-5),
                  "initializer_range": ("init_std", 0.02), "tie_word_embeddings": ("tie_embeddings", True)}
GPT2_FIELDS_FROM_HF = {**FIELDS_FROM_HF, "n_inner": ("n_inner", None)}  # OpenAIGPT's MLP is always 4 x n_embd


# ------------------------------------------------------------------------------------------------- import
def config_from_hf(meta: dict[str, Any], source: str) -> GPTConfig:
    """GPTConfig for an HF GPT2Config / OpenAIGPTConfig dict."""
    mtype = meta.get("model_type")
    if mtype not in ("gpt2", "openai-gpt"):  # before reading fields: other models name them differently
        raise CheckpointError(f"{source}: model_type {mtype!r} is not supported; gptkit reads 'gpt2' and "
                              f"'openai-gpt' (or its own checkpoints)")
    fields = hf_fields(meta, GPT2_FIELDS_FROM_HF if mtype == "gpt2" else FIELDS_FROM_HF, source)
    try:
        if mtype == "gpt2":
            act = meta.get("activation_function", "gelu_new")
            if not isinstance(act, str) or act not in GELU_FROM_HF:
                raise CheckpointError(f"{source}: activation {act!r} is not a GELU; gptkit supports "
                                      f"{', '.join(GELU_FROM_HF)}")
            if meta.get("scale_attn_by_inverse_layer_idx") or meta.get("scale_attn_weights") is False \
                    or meta.get("add_cross_attention"):
                raise CheckpointError(f"{source}: GPT2 attention variants (scale_attn_by_inverse_layer_idx, "
                                      f"unscaled attention, cross-attention) are not supported")
            return GPTConfig(**fields, gelu=GELU_FROM_HF[act], norm="pre", final_norm=True)
        if mtype == "openai-gpt":
            if meta.get("afn", "gelu") != "gelu":  # HF's OpenAIGPT "gelu" is the tanh approximation
                raise CheckpointError(f"{source}: activation {meta.get('afn')!r} is not supported (only 'gelu')")
            return GPTConfig(**fields, gelu="tanh", norm="post", final_norm=False, scaled_residual_init=False)
    except ConfigError as e:
        raise CheckpointError(f"bad model config in {source}/{CONFIG}: {e}") from None
    raise CheckpointError(f"{source}: model_type {mtype!r} is not supported; gptkit reads 'gpt2' and "
                          f"'openai-gpt' (or its own checkpoints)")


def hf_fields(meta: dict[str, Any], table: dict[str, tuple[str, Any]], source: str) -> dict[str, Any]:
    """The GPTConfig fields an HF config.json gives (`table`: FIELDS_FROM_HF), each checked by the field's rule and
    refused under its HF name."""
    fields = {}
    for key, (name, default) in table.items():
        value = meta.get(key, default)
        if value is REQUIRED:
            raise CheckpointError(f"{source}/{CONFIG} lacks {key!r}")
        problem = field_problem(name, value, key)
        if problem:
            raise CheckpointError(f"bad model config in {source}/{CONFIG}: {problem}")
        fields[name] = value
    return fields


def state_dict_from_hf(sd: dict[str, torch.Tensor], mtype: str, config: GPTConfig) -> dict[str, torch.Tensor]:
    """Rename and transpose an HF state dict into gptkit's layout."""
    # Bare GPT2Model / OpenAIGPTModel checkpoints have no "transformer." prefix.
    if not any(k.startswith("transformer.") for k in sd):
        sd = {("lm_head.weight" if k == "lm_head.weight" else f"transformer.{k}"): v for k, v in sd.items()}
    from_hf = {v: k for k, v in TOP_LEVEL[mtype].items()}
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name.endswith(IGNORED_SUFFIXES) or name.startswith(IGNORED_PREFIXES):
            continue
        if name == "lm_head.weight":
            if not config.tie_embeddings:
                out[name] = t
            continue
        new = from_hf.get(name, name)
        out[new] = t.t() if new.endswith(CONV1D) else t
    if config.tie_embeddings and "transformer.wte.weight" not in out and "lm_head.weight" in sd:
        # a tied matrix saved under the head's name only (transformers 5 does so for OpenAIGPTDoubleHeadsModel)
        out["transformer.wte.weight"] = sd["lm_head.weight"]
    return out


def index_shards(index_path: Path) -> list[str]:
    """The weight files a sharded HF checkpoint's index names (`weight_map`: tensor name → file in the same
    directory), or one line saying why the index cannot be read."""
    try:
        weight_map = parse_json(index_path.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index_path} is not a safetensors index (a JSON object with a weight_map of tensor "
                              f"name -> file; {type(e).__name__})") from None
    bad = [f for f in files if not isinstance(f, str) or Path(f).name != f or f in (".", "..")]
    if not files:
        raise CheckpointError(f"{index_path}: the weight_map names no file")
    if bad:
        raise CheckpointError(f"{index_path}: the weight_map must name files in its directory, got {bad[0]!r}")
    return files


def load_hf_model(path: Path, meta: dict[str, Any], map_location: str | torch.device = "cpu",
                  tokenizer: bool = True) -> GPT:
    """The model of an HF directory, and its tokenizer when `tokenizer` is set and one can be read (see
    `read_model` for the meta device)."""
    config = config_from_hf(meta, str(path))
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            sd = read_state_dict(path / name, map_location)
            break
    else:
        if (path / "model.safetensors.index.json").is_file():
            sd = {}
            for shard in index_shards(path / "model.safetensors.index.json"):
                sd.update(read_state_dict(path / shard, map_location))
        else:
            raise CheckpointError(f"{path} has config.json but no model.safetensors or pytorch_model.bin")
    model = build_model(config, state_dict_from_hf(sd, meta["model_type"], config), str(path), map_location)
    tok_files = [("gptkit_tokenizer.json",), ("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"),
                 ("tokenizer.json",)]
    if tokenizer and any(all((path / f).is_file() for f in group) for group in tok_files):
        from ..tokenizer import Tokenizer

        try:
            model.tokenizer = Tokenizer.from_pretrained(path)
        except Exception:  # a tokenizer we cannot read does not make the weights unusable
            model.tokenizer = None
    return model


# ------------------------------------------------------------------------------------------------- export
def hf_config(config: GPTConfig) -> dict[str, Any]:
    """The transformers config.json for a gptkit config, or ConfigError when transformers cannot represent it."""
    problems = []
    if config.attention != "dense":
        problems.append(f"attention={config.attention!r} (transformers' GPT2/OpenAIGPT only have dense attention)")
    if config.pos != "learned":
        problems.append("sinusoidal positions (transformers' GPT2/OpenAIGPT only have learned positions)")
    if not config.bias:
        problems.append("bias=False")
    if config.norm == "pre" and not config.final_norm:
        problems.append("pre-LN without a final LayerNorm")
    if config.norm == "post":
        if config.final_norm:
            problems.append("post-LN with a final LayerNorm")
        if config.gelu != "tanh":
            problems.append("exact GELU in a post-LN model (OpenAIGPT's 'gelu' is the tanh form)")
        if config.mlp_hidden != 4 * config.n_embd:
            problems.append("an MLP width other than 4 x n_embd in a post-LN model")
        if not config.tie_embeddings:
            problems.append("untied embeddings in a post-LN model")
    if problems:
        raise ConfigError("cannot export to transformers: " + "; ".join(problems))
    common = dict(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                  n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.resid_pdrop,
                  embd_pdrop=config.embd_pdrop, attn_pdrop=config.attn_pdrop,
                  layer_norm_epsilon=config.layer_norm_eps, initializer_range=config.init_std,
                  tie_word_embeddings=config.tie_embeddings)
    if config.norm == "post":
        return dict(model_type="openai-gpt", architectures=["OpenAIGPTLMHeadModel"], afn="gelu", **common)
    return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_inner=config.n_inner,
                activation_function="gelu_new" if config.gelu == "tanh" else "gelu", scale_attn_weights=True,
                **common)


def state_dict_to_hf(model: GPT, mtype: str) -> dict[str, torch.Tensor]:
    to_hf = TOP_LEVEL[mtype]
    out = {}
    for name, t in model_state_dict(model).items():
        if name.startswith("transformer.pos_table"):
            continue
        out[to_hf.get(name, name)] = (t.t() if name.endswith(CONV1D) else t).contiguous()
    return out


def export_hf(model: GPT, out_dir: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write `out_dir` so that transformers.AutoModelForCausalLM.from_pretrained(out_dir) loads the model
    (and AutoTokenizer the tokenizer, when it is a BPE one). Written atomically."""
    from safetensors.torch import save_file

    cfg = hf_config(model.config)
    final = Path(out_dir)
    tmp = new_tmp_dir(final)
    try:
        # every kind: gptkit reads gptkit_tokenizer.json back (a char vocabulary too, which transformers cannot
        # load); gpt2/gpt1 also get vocab.json + merges.txt, bpe tokenizer.json, for transformers
        if tokenizer is not None:
            tokenizer.save(tmp)
            if tokenizer.chat_template is not None:  # every kind: Hugging Face's place for it
                write_chat_template(tmp, tokenizer.chat_template)
            if tokenizer.eot_id is not None:
                cfg.update(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id)
        if "bos_token_id" not in cfg:  # transformers' GPT2Config defaults these to 50256
            cfg.update(bos_token_id=None, eos_token_id=None)
        save_file(state_dict_to_hf(model, cfg["model_type"]), str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2))
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# what `export_hf` writes: weights, config, and the tokenizer's files (gptkit's own and transformers')
EXPORT_FILES = {CONFIG, "model.safetensors", "gptkit_tokenizer.json", "vocab.json", "merges.txt",
                "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "generation_config.json"}


def is_hf_export(path: Path) -> bool:
    """Whether `path` looks like an earlier `export_hf` output: config.json with a transformers model_type,
    model.safetensors, and no file `export_hf` would not write."""
    if not (path / CONFIG).is_file() or not (path / "model.safetensors").is_file():
        return False
    try:
        meta = parse_json((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("model_type") not in ("gpt2", "openai-gpt") or "format" in meta:
        return False
    return all(f.is_file() and f.name in EXPORT_FILES for f in path.iterdir())


def check_export_target(ckpt: str | Path, out_dir: str | Path) -> None:
    """Refuse an --out that exporting would destroy: a file, a directory that is not an earlier export (as
    `prepare` refuses one that is not a prepared dataset), or the checkpoint being exported (or a folder
    holding it)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} exists and is not a directory")
    src = Path(ckpt).resolve()
    dst = out.resolve()
    if dst == src or dst in src.parents:
        raise CheckpointError(f"--out {out} is (or holds) the checkpoint being exported, {ckpt}; "
                              "choose another directory")
    if out.is_dir() and any(out.iterdir()) and not is_hf_export(out):
        raise CheckpointError(f"--out {out} is a non-empty directory that is not a `gptkit export-hf` output; "
                              "choose another directory or empty it")


def export_checkpoint(ckpt: str | Path, out_dir: str | Path) -> Path:
    """`gptkit export-hf`: a gptkit checkpoint (or run directory) → a transformers directory."""
    from ..checkpoint import load_model

    check_export_target(ckpt, out_dir)
    model = load_model(resolve_checkpoint(ckpt))
    return export_hf(model, out_dir, tokenizer=model.tokenizer)
