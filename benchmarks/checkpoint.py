"""Full vs sharded training checkpoints under FSDP2, side by side in one run: the time to save and to resume,
and the memory each process needs for it (its peak resident memory above what it held before).

full: rank 0 gathers the whole model and optimizer state and writes model.safetensors + trainer_state.pt; on
resume every process reads all of it. sharded: every process writes and reads only its own slices (shards/).
Both go through gptkit.train's own save path, and "load" does what its `--resume` does: build the model (from
model.safetensors; for shards, on the meta device), shard it, and load the optimizer state (and the shards).
Each measurement runs in fresh processes; peak memory is read from /proc (VmHWM above the RSS before the
operation), so memory the allocator kept from setting up can hide part of an operation's need: read the
memory columns as lower bounds, the differences between formats as what matters.

    python benchmarks/checkpoint.py                       # gpt2 (124M), 2 processes, gloo on CPU
    python benchmarks/checkpoint.py --preset gpt2-medium --nproc 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def worker(args) -> None:
    import torch

    from gptkit import GPT
    from gptkit import distributed as D
    from gptkit.checkpoint import SHARDS_DIR, checkpoint_config, load_model
    from gptkit.io import new_tmp_dir
    from gptkit.tokenizer import Tokenizer
    from gptkit.optim import param_groups
    from gptkit.train import TRAINER_STATE, TrainConfig, save_checkpoint, step_dir

    info = D.init("cpu")
    torch.manual_seed(0)
    model = GPT.from_preset(args.preset)
    n_params = sum(p.numel() for p in model.parameters())
    D.parallelize(model, "fsdp", torch.device("cpu"))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (1, 16))
    model(x).float().logsumexp(-1).mean().backward()  # one step, so that the optimizer has its state
    opt.step()
    opt.zero_grad(set_to_none=True)
    tok = Tokenizer.train_char("abc")
    cfg = TrainConfig(data="-", preset=args.preset)
    def save(fmt: str, run: Path) -> None:
        trainer = {"step": 1, "world_size": info.world_size, "checkpoint_format": fmt}
        if fmt == "sharded":
            tmp = Path(D.all_gather_objects(str(new_tmp_dir(step_dir(run, 1))) if info.is_main else None, info)[0])
            D.save_sharded(tmp / SHARDS_DIR, model, opt)
            D.barrier(info)
            if info.is_main:
                save_checkpoint(run, 1, model, None, None, tok, cfg, trainer, tmp=tmp)
        else:
            msd, osd = D.full_state_dicts(model, opt)
            if info.is_main:
                save_checkpoint(run, 1, model, msd, osd, tok, cfg, trainer)
            del msd, osd

    def load(fmt: str, run: Path) -> None:  # what train()'s --resume does with each format, into a new model
        ckpt = step_dir(run, 1)
        state = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True)
        if fmt == "full":
            new = load_model(ckpt)
            D.parallelize(new, "fsdp", torch.device("cpu"))
        else:  # built on the meta device, sharded, then given storage for its own shards only
            with torch.device("meta"):
                new = GPT(checkpoint_config(ckpt))
            D.parallelize(new, "fsdp", torch.device("cpu"))
            new.to_empty(device="cpu")
            new.reset_buffers_and_ties()
        new_opt = torch.optim.AdamW(param_groups(new, 0.1), lr=1e-4)
        if fmt == "full":
            D.load_optimizer_state(new, new_opt, state["optimizer"])
        else:
            D.load_sharded(ckpt / SHARDS_DIR, new, new_opt)

    fmt, op = args.scenario.split(":")
    run = Path(args.ckpt_run)
    D.barrier(info)
    base, _ = rss_mb()
    reset_peak()
    t = time.perf_counter()
    (save if op == "save" else load)(fmt, run)
    D.barrier(info)
    dt = time.perf_counter() - t
    extra = D.all_gather_objects(rss_mb()[1] - base, info)
    if info.is_main:
        print("RESULT", json.dumps({"seconds": dt, "extra_mb": extra, "params": n_params}))
    D.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to write the checkpoints (default: the temp dir)")
    ap.add_argument("--scenario", help=argparse.SUPPRESS)  # FORMAT:OP, in a worker
    ap.add_argument("--ckpt-run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if "RANK" in os.environ:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        worker(args)
        return
    # Each measurement in fresh processes, so that memory freed by an earlier one (and kept by the allocator)
    # does not hide what the next one needs.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    root = Path(tempfile.mkdtemp(prefix="gptkit-ckpt-", dir=args.dir))
    try:
        for r in range(args.rounds):
            for fmt in ("full", "sharded"):
                for op in ("save", "load"):
                    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={args.nproc}", __file__, "--preset", args.preset, "--scenario",
                           f"{fmt}:{op}", "--ckpt-run", str(root / f"{fmt}-{r}")]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                    if out.returncode or line is None:
                        sys.exit(f"{fmt} {op} failed:\n{out.stderr[-12000:]}")
                    rows.append((r, fmt, op, json.loads(line[7:])))
                shutil.rmtree(root / f"{fmt}-{r}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n_params = rows[0][3]["params"]
    print(f"{args.preset} ({n_params / 1e6:.0f}M params; weights + AdamW state {n_params * 12 / 2**20:,.0f} MB "
          f"fp32), FSDP2 over {args.nproc} processes, gloo on CPU, {args.rounds} round(s)")
    print(f"{'round':>5} {'format':>8} {'op':>5} {'seconds':>8}   peak extra MB per rank")
    for r, fmt, op, res in rows:
        print(f"{r:>5} {fmt:>8} {op:>5} {res['seconds']:>8.2f}   "
              + " ".join(f"{e:>7,.0f}" for e in res["extra_mb"]))
    for op in ("save", "load"):
        best = {f: min(res["seconds"] for _, g, o, res in rows if g == f and o == op) for f in ("full", "sharded")}
        most = {f: max(max(res["extra_mb"]) for _, g, o, res in rows if g == f and o == op)
                for f in ("full", "sharded")}
        print(f"{op}: full {best['full']:.2f} s / sharded {best['sharded']:.2f} s = "
              f"{best['full'] / best['sharded']:.2f}x; most memory one process needed: full {most['full']:,.0f} MB, "
              f"sharded {most['sharded']:,.0f} MB")


if __name__ == "__main__":
    main()
