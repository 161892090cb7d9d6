"""Multi-process training on PyTorch's own engine: torchrun launches, DDP or FSDP2 wraps, gloo or NCCL talks.

Parallelism stays out of model.py: `parallelize(model, mode)` wraps a plain GPT the way torchtitan does, and the
training loop only asks this module for the rank, for a context that skips gradient sync during accumulation,
and for the state to checkpoint. Checkpoints come in two formats, both keyed by parameter name and both
resumable on any number of processes:

- full: rank 0 gathers the whole model and optimizer (torch.distributed.checkpoint.state_dict) and writes one
  model.safetensors plus the optimizer into trainer_state.pt: the most portable, but rank 0 must hold it all;
- sharded (the default under FSDP): every rank writes only its own shards, in parallel, with
  torch.distributed.checkpoint into `shards/*.safetensors`, and a run of M processes (or one process loading the
  model to sample from it) reads the slices it needs from them. Nothing is gathered and nothing is pickled: the
  shard layout lives in the safetensors headers (DCP's Hugging Face storage), not in DCP's pickled .metadata.

    torchrun --nproc-per-node 2 -m gptkit train --data DIR --parallel ddp ...
    gptkit train --nproc 2 --data DIR ...        # the same, launched for you
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .errors import CheckpointError, GptkitError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init(device_type: str) -> DistInfo:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU); a no-op for one process."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        if device_type == "cuda":
            if info.local_rank >= torch.cuda.device_count():
                raise GptkitError(f"process {info.local_rank} of this node has no GPU of its own: "
                                  f"{torch.cuda.device_count()} visible, start at most that many per node")
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def shutdown(together: bool = False) -> None:
    """End this process's part in the process group. `together` (the success path): wait for every rank first, so
    that no rank tears its gloo threads down while another still uses the group (a rank once aborted with
    'terminate called without an active exception' when it left first)."""
    if dist.is_initialized():
        if together and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def parallelize(model: nn.Module, mode: str, device: torch.device, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Wrap `model` for data parallelism. 'ddp': one full replica per process, gradients all-reduced.
    'fsdp': FSDP2 `fully_shard` on every block and then the root, parameters sharded across processes and
    gathered per block; `param_dtype` (e.g. bf16) sets its mixed-precision compute dtype."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
        kw: dict[str, Any] = {"mp_policy": mp} if mp is not None else {}
        for block in model.transformer.h:
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}")


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, mode: str, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps (`sync=False`); the last one syncs."""
    if sync or mode == "none":
        yield
    elif mode == "ddp":
        with model.no_sync():
            yield
    else:  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


# torch.distributed.checkpoint is imported where it is used: it costs 0.6-0.9 s, and a run in one process that
# neither resumes nor shards never needs it.
def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state, keyed by parameter name, on CPU. A collective: every rank must call
    it; only rank 0 gets the tensors (the other ranks get empty dicts, so their memory does not grow). In one
    process with no process group, `named_state_dicts`: the same dicts."""

    if _one_cpu_process(model):
        return named_state_dicts(model, optimizer)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def named_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """A plain module's and its optimizer's state keyed by parameter name, as torch.distributed.checkpoint's
    full state dicts are (a tied parameter under its first name), without importing it."""

    names = _optimizer_param_names(model, optimizer)
    sd = optimizer.state_dict()  # keyed by position in `names`
    state = {names[i]: s for i, s in sd["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return model.state_dict(), {"state": state, "param_groups": groups}


def _optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each of the optimizer's parameters, in the order its state dict numbers them (a tied
    parameter under its first name, as torch.distributed.checkpoint names it)."""
    names = {p: n for n, p in model.named_parameters()}
    return [names[p] for group in optimizer.param_groups for p in group["params"]]


def _one_cpu_process(model: nn.Module) -> bool:
    """One process, no process group, the model on the CPU: where state dicts need no torch.distributed."""
    return not dist.is_initialized() and all(p.device.type == "cpu" for p in model.parameters())


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a name-keyed full optimizer state (from `full_state_dicts`) into a plain, DDP or FSDP2 model's
    optimizer, whatever the number of processes that saved it. In one process with no process group,
    `load_named_optimizer_state`, without importing torch.distributed.checkpoint."""
    if _one_cpu_process(model):
        load_named_optimizer_state(model, optimizer, state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def load_named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The inverse of `named_state_dicts` for the optimizer: a name-keyed state (saved by one process or many)
    loaded by position, as `optimizer.load_state_dict` takes it. torch.distributed.checkpoint, and through it
    torch._dynamo, cost a resume 1.5-2 s of imports on two cores."""
    index = {n: i for i, n in enumerate(_optimizer_param_names(model, optimizer))}
    unknown = sorted({*state["state"], *(n for g in state["param_groups"] for n in g["params"])} - set(index))
    if unknown:
        raise ValueError(f"the saved optimizer state has parameters this model does not: {', '.join(unknown[:3])}")
    optimizer.load_state_dict({"state": {index[n]: s for n, s in state["state"].items()},
                               "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                                for g in state["param_groups"]]})


def load_full_from_rank0(model: nn.Module, state: dict) -> None:
    """Fill a sharded model from a full state dict that only rank 0 holds (the others pass {}): rank 0 sends each
    tensor, every rank keeps its own shard. So a fresh FSDP run never holds the whole model on every rank."""

    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= info.world_size
    return x


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing: each block's activations are recomputed in backward instead of stored, which
    trades ~30% more compute for memory that no longer grows with depth. Done by replacing each block's
    forward on the instance, so parameter names (and checkpoints) do not change."""

    for block in model.transformer.h:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():  # decoding / eval: nothing to save memory on
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


# ------------------------------------------------------------------------------------ sharded checkpoints
def _flat_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], dict, dict | None]:
    """The model's (and optimizer's) state as one flat {name: tensor} dict, each tensor this rank's own shard
    (a DTensor under FSDP2, a plain tensor otherwise). Names: `model.<param>` and `optim.<param>.<exp_avg|...>`.
    The tied output head is the embedding, so it is stored once. Optimizer hyperparameters are not stored:
    the training loop rebuilds them from its config (and sets the lr every step)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        model_sd, optim_sd = get_model_state_dict(model), None
    else:  # for a fresh optimizer this also creates its (zero) state, for the load to fill in
        model_sd, optim_sd = get_state_dict(model, optimizer)
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    flat: dict[str, Any] = {f"model.{k}": v for k, v in model_sd.items() if not (tied and k == "lm_head.weight")}
    for fqn, state in (optim_sd or {}).get("state", {}).items():
        for name, value in state.items():
            flat[f"optim.{fqn}.{name}"] = value
    return flat, model_sd, optim_sd


def _shard_files(names: list[str]) -> dict[str, int]:
    """Which file (1-based) each flat state name goes to: one per (block, kind), the kinds being the weights
    and each optimizer moment. DCP stages a file in memory whole (twice) before writing it, so small files keep
    the extra memory of a save to a few times one block's weights instead of twice the process's whole state."""
    def group(name: str) -> tuple[int, str]:
        parts = name.split(".")
        block = next((int(parts[i + 1]) for i in range(len(parts) - 1)
                      if parts[i] == "h" and parts[i + 1].isdigit()), -1)
        kind = parts[-1] if parts[0] == "optim" and parts[-1] != "step" else "model"
        return block, kind

    index = {g: i for i, g in enumerate(sorted({group(n) for n in names}), start=1)}
    return {n: index[group(n)] for n in names}


def save_sharded(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Every rank writes its own shards of the model and optimizer state into `directory` (a collective)."""

    import torch.distributed.checkpoint as dcp

    flat, _, _ = _flat_state(model, optimizer)
    writer = dcp.HuggingFaceStorageWriter(str(directory), save_distributed=True,
                                          fqn_to_index_mapping=_shard_files(list(flat)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP's note that it saves in a single process
        dcp.save(flat, storage_writer=writer, no_dist=not dist.is_initialized())


def load_sharded(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Fill a plain, DDP or FSDP2 model (and its optimizer) from `save_sharded`'s files, whatever the number of
    processes that wrote them: each rank reads just the slices its own shards cover. A collective under torchrun;
    also works in a single process with no process group (e.g. loading a checkpoint to sample from it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    flat, model_sd, optim_sd = _flat_state(model, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # DCP's note that it loads in a single process
            dcp.load(flat, storage_reader=dcp.HuggingFaceStorageReader(str(directory)),
                     no_dist=not dist.is_initialized())
    except Exception as e:  # CheckpointException wraps each rank's error; the first line names it
        why = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise CheckpointError(f"{directory}: the sharded checkpoint does not fit this model ({why[:300]})") from None
    set_model_state_dict(model, model_sd)  # the loaded tensors are the live ones; this also re-ties and checks
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_sd)
