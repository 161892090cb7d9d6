"""Multi-process training on CPU (gloo, 2 processes through torchrun): DDP and FSDP2 follow the single-process
trajectory with the same global batch; 2-process checkpoints (full and sharded) resume on 1 process and a
1-process sharded one on 2. Plus GPU-efficiency plumbing that can be checked on a CPU: zero graph breaks under
torch.compile, the GPU peak table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gptkit import distributed as D
from gptkit.checkpoint import list_checkpoints, load_model
from gptkit.config import GPTConfig
from gptkit.model import GPT

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMON = ["--preset", "gpt-nano", "--block-size", "32", "--batch-size", "4", "--eval-interval", "10",
          "--eval-iters", "3", "--log-interval", "1", "--dropout", "0", "--threads", "1", "--quiet",
          "--lr", "3e-3", "--warmup-iters", "2"]


@pytest.fixture(scope="module")
def char_data(shared_data: Path, tmp_path_factory) -> Path:
    from gptkit.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare_char"
    prepare([str(shared_data / "tinyshakespeare" / "input.txt")], out, tokenizer="char")
    return out


def gptkit_train(*args: str, rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "gptkit", "train", *args], env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == rc, proc.stderr[-3000:]
    return proc


def train_losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def val_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    assert len(out) == 2  # steps 10 and 20
    return out


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_model(list_checkpoints(run)[-1]).state_dict()  # either format


@pytest.fixture(scope="module")
def single(char_data: Path, tmp_path_factory) -> Path:
    """One process, gradient accumulation 2: the reference for 2 processes × accumulation 1."""
    run = tmp_path_factory.mktemp("single") / "run"
    gptkit_train("--data", str(char_data), "--out", str(run), "--max-iters", "20", "--grad-accum", "2", *COMMON)
    return run


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_follow_one_process(char_data: Path, single: Path, tmp_path: Path, parallel: str) -> None:
    run = tmp_path / parallel
    gptkit_train("--data", str(char_data), "--out", str(run), "--max-iters", "20", "--nproc", "2",
                 "--parallel", parallel, *COMMON)
    ref, got = train_losses(single), train_losses(run)
    assert len(ref) == len(got) == 20
    assert max(abs(a - b) for a, b in zip(ref, got)) <= 1e-5, (ref, got)
    assert got[-1] < got[0] - 0.2  # and it actually trains
    # eval batches are shared out across ranks (3 over 2: one rank repeats one at weight 0): the same mean
    assert max(abs(a - b) for a, b in zip(val_losses(single), val_losses(run))) <= 1e-5
    cfg = json.loads((run / "train_config.json").read_text())
    assert cfg["parallel"] == parallel
    # one metrics writer (rank 0): no duplicated lines
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 21))
    wa, wb = final_weights(single), final_weights(run)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-4


def writers(ckpt: Path) -> int:
    """How many processes wrote a sharded checkpoint's files (DCP names them shard-<rank + 1>-...)."""
    return len({p.name.split("-")[1] for p in (ckpt / "shards").glob("shard-*.safetensors")})


def same_run(ref: Path, got: Path) -> None:
    a, b = train_losses(ref), train_losses(got)
    assert len(b) == 20 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5, (a, b)
    wa, wb = final_weights(ref), final_weights(got)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-4


@pytest.mark.parametrize("fmt", ["auto", "full"])
def test_two_process_checkpoint_resumes_on_one_process(char_data: Path, single: Path, tmp_path: Path,
                                                       fmt: str) -> None:
    run = tmp_path / "run"
    gptkit_train("--data", str(char_data), "--out", str(run), "--max-iters", "10", "--lr-decay-iters", "20",
                 "--nproc", "2", "--parallel", "fsdp", "--checkpoint-format", fmt, *COMMON)
    ckpt = list_checkpoints(run)[-1]
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    if fmt == "auto":  # FSDP's default: each process wrote its own shard of weights and optimizer, no gather
        assert state["checkpoint_format"] == "sharded" and "optimizer" not in state
        assert not (ckpt / "model.safetensors").exists()
        assert writers(ckpt) == 2
    else:
        assert state["checkpoint_format"] == "full" and (ckpt / "model.safetensors").is_file()
    # resume with one process; grad_accum 2 keeps the global batch of the 2-process run
    gptkit_train("--data", str(char_data), "--out", str(run), "--max-iters", "20", "--grad-accum", "2",
                 "--resume", "--quiet")
    same_run(single, run)


def test_one_process_sharded_checkpoint_resumes_on_two(char_data: Path, single: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    gptkit_train("--data", str(char_data), "--out", str(run), "--max-iters", "10", "--lr-decay-iters", "20",
                 "--grad-accum", "2", "--checkpoint-format", "sharded", *COMMON)
    assert writers(list_checkpoints(run)[-1]) == 1
    gptkit_train("--data", str(char_data), "--out", str(run), "--max-iters", "20", "--grad-accum", "1",
                 "--nproc", "2", "--parallel", "fsdp", "--resume", "--quiet")
    same_run(single, run)
    assert writers(list_checkpoints(run)[-1]) == 2


def test_sharded_checkpoint_loads_whole_and_refuses_a_missing_shard(tmp_path: Path) -> None:
    """A sharded checkpoint loads as one model, equal to its weights gathered; one shard gone is one clear error."""
    from gptkit import GPT
    from gptkit.checkpoint import CheckpointError, shard_manifest, write_config_files
    from gptkit.distributed import save_sharded

    torch.manual_seed(0)
    model = GPT.from_preset("gpt-nano", vocab_size=64, block_size=32)
    ckpt = tmp_path / "ckpt"
    save_sharded(ckpt / "shards", model, None)
    write_config_files(ckpt, model.config, extra={"shards": shard_manifest(ckpt)})
    loaded = load_model(ckpt)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # the tie survives
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    shard = next((ckpt / "shards").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="not the size it was written at"):
        load_model(ckpt)
    shard.unlink()
    with pytest.raises(CheckpointError, match="is incomplete: .* is missing"):
        load_model(ckpt)


def test_nproc_user_mistake_is_one_line(tmp_path: Path) -> None:
    """`--nproc` checks what every process would trip over before starting them: one line, exit 2, no launcher
    traceback."""
    proc = gptkit_train("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--nproc", "2", rc=2)
    assert proc.stderr.count("gptkit: error:") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "data directory not found" in proc.stderr


def test_a_held_run_directory_stops_every_launch(char_data: Path, tmp_path: Path) -> None:
    """One writer per run directory: the --nproc launcher takes the lock before starting anything (its processes
    then run under it: the tests above); under a bare torchrun rank 0 takes it and every rank stops with it."""
    from gptkit.runlock import LOCK_NAME, RunLock

    run = tmp_path / "run"
    with RunLock(run):
        proc = gptkit_train("--data", str(char_data), "--out", str(run), "--nproc", "2", *COMMON, rc=2)
        assert proc.stderr.count("\n") == 1 and f"{run} is being written by process {os.getpid()}" in proc.stderr
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "gptkit", "train", "--data", str(char_data), "--out", str(run), "--max-iters",
                               "2", *COMMON], env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0 and proc.stderr.count(f"is being written by process {os.getpid()}") == 2
        assert [p.name for p in run.iterdir()] == [LOCK_NAME]  # nothing written


@pytest.mark.parametrize("attention", ["dense", "alternating"])
def test_compile_has_no_graph_breaks(attention: str) -> None:
    from gptkit import GPT

    torch.manual_seed(0)
    model = GPT.from_preset("gpt-nano", vocab_size=64, block_size=32, attention=attention, band_width=8)
    idx = torch.randint(0, 64, (2, 32))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()  # and as the trainer calls it: the loss fused with the output projection
    explanation = torch._dynamo.explain(model)(idx, targets=idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    from gptkit import GPT
    from gptkit.distributed import checkpoint_blocks

    torch.manual_seed(0)
    a = GPT.from_preset("gpt-nano", vocab_size=64, block_size=32)
    b = GPT.from_preset("gpt-nano", vocab_size=64, block_size=32)
    b.load_state_dict(a.state_dict())
    checkpoint_blocks(b)
    idx = torch.randint(0, 64, (2, 32))
    for m in (a, b):
        m(idx).logsumexp(-1).mean().backward()
    assert list(dict(a.named_parameters())) == list(dict(b.named_parameters()))  # names unchanged
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=n)


def test_gpu_peak_table() -> None:
    from gptkit.runtime import gpu_peak_flops

    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("Some Future Accelerator") is None  # unknown: no MFU rather than nonsense


@pytest.mark.parametrize("tied", [True, False])
def test_one_process_state_dicts_are_torch_distributed_checkpoints(tied: bool) -> None:
    """named_state_dicts (a single process, no import of torch.distributed.checkpoint) gives exactly the full
    state dicts of torch.distributed.checkpoint.state_dict.get_state_dict, the oracle: same names (a tied
    parameter under its first), same tensors, same parameter groups."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from gptkit.optim import adamw

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=16, tie_embeddings=tied))
    optimizer = adamw(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, fused=True)
    for _ in range(2):
        x = torch.randint(40, (3, 8))
        model(x, targets=x).backward()
        optimizer.step()
    ours = D.named_state_dicts(model, optimizer)
    assert D.full_state_dicts(model, optimizer)[1]["state"].keys() == ours[1]["state"].keys()  # what saves use
    want = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for got, ref in zip(ours, want):
        assert list(got) == list(ref)
    for name, tensor in want[0].items():
        assert torch.equal(ours[0][name], tensor), name
    for name, state in want[1]["state"].items():
        assert state.keys() == ours[1]["state"][name].keys()
        for k, v in state.items():
            assert torch.equal(ours[1]["state"][name][k], v), (name, k)
    assert ours[1]["param_groups"] == want[1]["param_groups"]


@pytest.mark.parametrize("tied", [True, False])
def test_one_process_loads_optimizer_state_as_torch_distributed_checkpoint_does(tied: bool) -> None:
    """load_named_optimizer_state (one process, no import of torch.distributed.checkpoint) leaves an optimizer
    in exactly the state set_optimizer_state_dict, the oracle, gives it from the same name-keyed state; and a
    state naming a parameter the model lacks is refused in words."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from gptkit.optim import adamw

    def trained(seed: int):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=16, tie_embeddings=tied))
        optimizer = adamw(model, 1e-3 * (seed + 1), 0.1, (0.9, 0.95), 1e-8, fused=True)
        for _ in range(seed + 1):
            x = torch.randint(40, (3, 8))
            model(x, targets=x).backward()
            optimizer.step()
        return model, optimizer

    saved = D.named_state_dicts(*trained(1))[1]
    ours, ref = trained(0), trained(0)
    D.load_named_optimizer_state(*ours, saved)
    set_optimizer_state_dict(*ref, saved, options=StateDictOptions(full_state_dict=True))
    got, want = ours[1].state_dict(), ref[1].state_dict()
    same = [{**g, "betas": tuple(g["betas"])} for g in want["param_groups"]]  # the oracle's betas come back a list
    assert got["param_groups"] == same and got["state"].keys() == want["state"].keys()
    for i, state in want["state"].items():
        assert all(torch.equal(got["state"][i][k], v) for k, v in state.items()), i
    assert got["param_groups"][0]["lr"] == 2e-3  # the saved run's settings, not the fresh optimizer's
    stray = {**saved, "state": {**saved["state"], "transformer.h.9.mlp.c_fc.weight": {}}}
    with pytest.raises(ValueError, match="transformer.h.9.mlp.c_fc.weight"):
        D.load_named_optimizer_state(*trained(0), stray)
