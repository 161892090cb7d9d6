"""Model checkpoints on disk: gptkit's own format, training-run directories, and Hugging Face directories.

A gptkit checkpoint is a directory:

    config.json          {"format": "gptkit", "format_version": 1, "model": {GPTConfig fields}, ...}
    model.safetensors    the weights (the tied lm_head is stored once, as transformer.wte.weight)
    tokenizer/           the tokenizer, when there is one (see gptkit.tokenizer)

or, written by a sharded training run (gptkit.distributed), `shards/*.safetensors` instead of model.safetensors:
each training process's slices of the weights and optimizer state, listed with their sizes in config.json.

Directories are written next to their destination and renamed into place (gptkit.io), so a crash mid-write
never leaves a half-written checkpoint where a complete one is expected. Pickles are never unpickled except through
`torch.load(weights_only=True)`, which refuses code.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import ConfigError, GPTConfig
from .errors import CheckpointError
from .io import new_tmp_dir, parse_json, publish_dir

if TYPE_CHECKING:
    from .model import GPT
    from .tokenizer import Tokenizer

FORMAT = "gptkit"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
SHARDS_DIR = "shards"
CONFIG = "config.json"
TOKENIZER_DIR = "tokenizer"
STEP_DIR = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------------------------- state dicts
def read_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read weights from a .safetensors file, or a PyTorch .bin/.pt with weights_only=True (never arbitrary
    pickles). On the meta device a .safetensors file gives its header only: each tensor's name and shape (as a
    float32 meta tensor), checked against the file's length, no weights read."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            if torch.device(map_location).type == "meta":
                with safe_open(str(path), framework="pt") as f:
                    return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
            return load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    try:
        # mmap needs torch's zip format; a legacy (torch < 1.6) pickle file is read without it, still weights-only
        sd = torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # UnpicklingError for code-carrying pickles, RuntimeError for corrupt files
        # torch's first line only suggests weights_only=False; the line naming the refused global/opcode says why
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        why = next((ln for ln in lines if ln.startswith(("Trying to load unsupported", "Unsupported"))), lines[0])
        raise CheckpointError(f"refusing to load {path}: not a plain tensor file "
                              f"(torch.load with weights_only=True failed: {why})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a dict of tensors")
    return sd


def model_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights with the tied output head stored once (safetensors refuses shared storage)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def check_finite(name: str, t: torch.Tensor, source: str) -> None:
    """Refuse a weight holding NaN or infinite values (a damaged file, or one saved from a diverged run): such a
    model answers end-of-text for every prompt, and training from it diverges at once."""
    # one sum per tensor: a NaN or an infinity anywhere makes it non-finite (finite weights summing past 3e38 would
    # too, and are no model either); over GPT-2 small's weights 0.42 s against isfinite().all()'s 2.6 s (2-core
    # Zen 1)
    if t.is_floating_point() and t.device.type != "meta" and not math.isfinite(t.sum(dtype=torch.float32)):
        bad = int((~torch.isfinite(t)).sum())
        what = f"holds {bad:,} NaN or infinite values (of {t.numel():,})" if bad else \
            "holds values too large for float32 to sum"
        raise CheckpointError(f"{source}: {name} {what}: the weights are damaged, or were saved from a run that "
                              f"diverged")


def build_model(config: GPTConfig, state_dict: dict[str, torch.Tensor], source: str,
                map_location: str | torch.device = "cpu") -> GPT:
    """A GPT with these weights, built without spending time on a random initialisation first."""
    from .model import empty_model

    model = empty_model(config, map_location)
    expected = set(model_state_dict(model))
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected - {"lm_head.weight"}
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {sorted(missing)[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            detail.append(f"unexpected {sorted(unexpected)[:3]}{'...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{source}: weights do not match the config ({'; '.join(detail)})")
    for name, t in state_dict.items():
        if name in expected:
            want = model.get_parameter(name) if name in dict(model.named_parameters()) else model.get_buffer(name)
            if tuple(want.shape) != tuple(t.shape):
                raise CheckpointError(f"{source}: {name} has shape {tuple(t.shape)}, the config needs "
                                      f"{tuple(want.shape)}")
        check_finite(name, t, source)
    model.load_state_dict(state_dict, strict=False)
    return model.eval()  # as transformers does: loaded models are for inference until .train() is called


# ----------------------------------------------------------------------------------------- gptkit format
def write_model_files(directory: Path, model: GPT, tokenizer: Tokenizer | None = None,
                      extra: dict[str, Any] | None = None,
                      state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write the files of a gptkit checkpoint into `directory` (not atomic by itself: see save_model).
    `state_dict` overrides the model's own (a full state gathered from a sharded model)."""
    from safetensors.torch import save_file

    sd = model_state_dict(model) if state_dict is None else dict(state_dict)
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / WEIGHTS), metadata={"format": "pt"})
    write_config_files(directory, model.config, tokenizer, extra)


def write_config_files(directory: Path, config: GPTConfig, tokenizer: Tokenizer | None = None,
                       extra: dict[str, Any] | None = None) -> None:
    """config.json and tokenizer/ of a checkpoint (the weights are written by the caller)."""
    from . import __version__

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "gptkit_version": __version__,
            "model": config.to_dict(), **(extra or {})}
    (directory / CONFIG).write_text(json.dumps(meta, indent=2))
    if tokenizer is not None:
        tokenizer.save(directory / TOKENIZER_DIR)


def shard_manifest(directory: Path) -> dict[str, int]:
    """{file name: size} of a sharded checkpoint's shards/ (recorded in config.json, checked on load)."""
    return {p.name: p.stat().st_size for p in sorted((directory / SHARDS_DIR).glob("*.safetensors"))}


def has_weights(path: Path) -> bool:
    """Whether a checkpoint directory holds its weights: model.safetensors, or a sharded run's shards/."""
    return (path / WEIGHTS).is_file() or (path / SHARDS_DIR).is_dir()


def is_sharded(path: Path) -> bool:
    return not (path / WEIGHTS).is_file() and (path / SHARDS_DIR).is_dir()


def check_shards(path: Path, meta: dict[str, Any]) -> None:
    """A sharded checkpoint is usable only whole: every shard its config.json lists, at its recorded size."""
    want = meta.get("shards")
    if not isinstance(want, dict) or not want:
        raise CheckpointError(f"{path / CONFIG} does not list the files of {path / SHARDS_DIR}")
    have = shard_manifest(path)
    bad = sorted(n for n, size in want.items() if have.get(n) != size)
    if bad:
        raise CheckpointError(f"{path / SHARDS_DIR} is incomplete: {bad[0]} is "
                              f"{'missing' if bad[0] not in have else 'not the size it was written at'}"
                              + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))


def save_model(model: GPT, directory: str | Path, tokenizer: Tokenizer | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write a gptkit checkpoint directory atomically (see the module docstring)."""
    final = Path(directory)
    tmp = new_tmp_dir(final)
    try:
        write_model_files(tmp, model, tokenizer, extra)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_config_json(path: Path) -> dict[str, Any]:
    try:
        data = parse_json((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON
        raise CheckpointError(f"{path / CONFIG} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path / CONFIG} does not hold a JSON object")
    return data


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A training checkpoint's trainer_state.pt (optimizer, RNG, step, data position), read weights-only. A file
    that is not one is refused in one line, without torch's advice to retry with weights_only=False (which would
    run whatever code a foreign pickle carries)."""
    resume = "resume from an earlier checkpoint by removing this one"
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol it does not expect: not a line more
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or type(e).__name__}); {resume}") from None
    except MemoryError:
        raise
    except Exception:  # RuntimeError for a cut zip, UnpicklingError for text or a pickle of other objects
        saved = None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} cannot be read: it is not a trainer state gptkit wrote (the file is corrupt "
                              f"or cut short, or did not come from gptkit); {resume}")
    return saved


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a training run (`RUN/checkpoints/step-N`), oldest first. Directories being
    written have a hidden temporary name until they are complete, so they never appear here."""
    ckpt_root = Path(run_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir()
             if (m := STEP_DIR.match(p.name)) and p.is_dir() and has_weights(p)]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory a user means by `path`: itself, or a training run's latest checkpoint."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"{p} is not a directory: a checkpoint is a directory with config.json and "
                              f"model weights")
    if (p / CONFIG).is_file():
        return p
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    raise CheckpointError(f"{p} is not a checkpoint: expected config.json with model.safetensors (gptkit or "
                          f"Hugging Face GPT2/OpenAIGPT), or a training run with checkpoints/step-N")


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               tokenizer_dir: str | Path | None = None) -> GPT:
    """Load a gptkit checkpoint, a run directory's latest checkpoint, or a Hugging Face GPT2/OpenAIGPT dir.
    `tokenizer_dir` (`--tokenizer-dir`) gives the model that tokenizer instead of the checkpoint's own (or a
    tokenizer where the checkpoint has none); one with more ids than the model's vocabulary is refused."""
    model = read_model(resolve_checkpoint(path), map_location)
    if tokenizer_dir:
        from .tokenizer import Tokenizer

        tok = Tokenizer.from_pretrained(tokenizer_dir)
        if tok.vocab_size > model.config.vocab_size:
            raise CheckpointError(f"the tokenizer in {tokenizer_dir} has {tok.vocab_size} ids but the model only "
                                  f"{model.config.vocab_size}")
        model.tokenizer = tok
    return model


def read_model(p: Path, map_location: str | torch.device = "cpu", tokenizer: bool = True) -> GPT:
    """The model in checkpoint directory `p` (gptkit's or Hugging Face's), with the checkpoint's tokenizer unless
    `tokenizer` is False. On the meta device no weights are read, only the headers of the weight files (the sizes
    of a sharded checkpoint's files), whose names and shapes are checked against the config (`gptkit info`)."""
    meta = read_config_json(p)
    if meta.get("format") != FORMAT:
        from .interop.hf import load_hf_model

        return load_hf_model(p, meta, map_location=map_location, tokenizer=tokenizer)
    config = checkpoint_config(p, meta)
    if is_sharded(p):
        model = load_sharded_model(p, config, meta, map_location)
    elif not (p / WEIGHTS).is_file():
        raise CheckpointError(f"{p} has no {WEIGHTS}")
    else:
        model = build_model(config, read_state_dict(p / WEIGHTS, map_location), str(p), map_location)
    model.tokenizer = checkpoint_tokenizer(p) if tokenizer else None
    return model


def checkpoint_config(p: Path, meta: dict[str, Any] | None = None) -> GPTConfig:
    """The GPTConfig of a gptkit checkpoint directory."""
    meta = read_config_json(p) if meta is None else meta
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{p / CONFIG}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{p} was written by a newer gptkit (format {version}); upgrade")
    if "model" not in meta:
        raise CheckpointError(f"bad model config in {p / CONFIG}: it has no \"model\" object (the GPTConfig fields)")
    try:
        return GPTConfig.from_dict(meta["model"])
    except ConfigError as e:
        raise CheckpointError(f"bad model config in {p / CONFIG}: {e}") from None


def checkpoint_tokenizer(p: Path) -> Tokenizer | None:
    if not (p / TOKENIZER_DIR).is_dir():
        return None
    from .tokenizer import Tokenizer

    return Tokenizer.from_pretrained(p / TOKENIZER_DIR)


def load_sharded_model(p: Path, config: GPTConfig, meta: dict[str, Any],
                       map_location: str | torch.device = "cpu") -> GPT:
    """One process's whole model from a sharded checkpoint: the slices of every shard file, put together."""
    from .distributed import load_sharded
    from .model import empty_model

    check_shards(p, meta)
    model = empty_model(config, map_location)
    if torch.device(map_location).type != "meta":  # on the meta device: the files' sizes checked, nothing read
        load_sharded(p / SHARDS_DIR, model)
    return model.eval()
