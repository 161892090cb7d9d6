"""gptkit.runtime (device, dtype, threads, the progress display) and gptkit.optim (groups, step, schedules)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from gptkit.errors import GptkitError
from gptkit.optim import optimizer_step, param_groups, warmup_cosine, warmup_linear
from gptkit.runtime import DeviceError, Progress, pick_device, pick_dtype, set_threads
from gptkit.train import TrainError


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "mps", "nonsense"])
def test_a_bad_device_is_a_device_error_not_a_training_one(name: str) -> None:
    with pytest.raises(DeviceError) as e:
        pick_device(name)
    assert isinstance(e.value, GptkitError) and not isinstance(e.value, TrainError)
    assert "\n" not in str(e.value)


def test_device_and_dtype_choices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            pick_device("cuda")
    assert pick_dtype("auto", torch.device("cpu")) is torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(DeviceError):
        pick_dtype("float8", torch.device("cpu"))


def test_set_threads() -> None:
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)  # leaves torch's choice alone
        assert torch.get_num_threads() == 1
        with pytest.raises(DeviceError):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_progress_off_a_terminal_prints_only_the_lines_asked_for(capsys) -> None:
    with Progress(live=False) as p:
        t = p.add_task("train", total=100)
        p.update(t, 10, info="loss 1.0")  # not a log line: nothing
        p.update(t, 20, info="loss 0.5", line=True)
        p.update(t, total=50)
        p.update(t, 30, info="x", line=True)
        p.print("eval step 30")
    assert capsys.readouterr().err.splitlines() == ["train     20/100 loss 0.5", "train     30/50 x", "eval step 30"]
    with Progress(quiet=True, live=True) as p:  # quiet wins, even on a terminal
        assert not p.live
        p.update(p.add_task("x", total=1), 1, line=True)
        p.print("hidden")
    assert capsys.readouterr().err == ""


def test_param_groups_decay_matrices_only() -> None:
    from gptkit import GPT, GPTConfig

    model = GPT(GPTConfig.from_preset("gpt-nano"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())  # each parameter once, tied weights included


def test_optimizer_step_clips_then_steps_and_drops_the_gradients() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    model = torch.nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=1.0)
    w.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5
    optimizer_step(model, opt, grad_clip=1.0)
    assert torch.allclose(w.detach(), torch.tensor([-0.6, -0.8, 0.0])) and w.grad is None
    w.grad = torch.tensor([3.0, 4.0, 0.0])
    optimizer_step(model, opt, grad_clip=0.0)  # 0: no clipping
    assert torch.allclose(w.detach(), torch.tensor([-3.6, -4.8, 0.0]))


@pytest.mark.parametrize("grad_clip", [0.5, 1e9, 0.0])
def test_the_fused_adamw_step_is_torchs_clip_and_step(grad_clip: float, monkeypatch) -> None:
    """optimizer_step's direct fused AdamW step against torch's own (clip_grad_norm_, AdamW(fused=True).step()),
    over a small GPT's real gradients: bitwise equal when nothing is clipped; when clipping, a division for a
    multiplication: one step from the same start equal up to float32 rounding (over more steps training
    amplifies such differences, as any change of rounding). It is the path taken from the first step on."""
    import gptkit.optim as O
    from gptkit.config import GPTConfig
    from gptkit.model import GPT

    fused = O.fused_adamw_step
    steps = 1 if grad_clip == 0.5 else 6

    def run(direct: bool) -> tuple[list[torch.Tensor], list[bool]]:
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_preset("gpt-nano", vocab_size=50, block_size=16))
        opt = O.adamw(model, 1e-2, 0.1, (0.9, 0.95), 1e-8)
        taken = []
        monkeypatch.setattr(O, "fused_adamw_step", lambda o, c: taken.append(direct and fused(o, c)) or taken[-1])
        for step in range(steps):
            x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(step))
            model(x, targets=x.roll(1, 1)).backward()
            O.optimizer_step(model, opt, grad_clip)
            assert all(p.grad is None for p in model.parameters())
        return [p.detach().clone() for p in model.parameters()], taken

    (ref, _), (got, taken) = run(False), run(True)
    assert taken == [True] * steps  # the direct call from the first step (it makes the state as torch does)
    if grad_clip == 0.5:
        assert any(not torch.equal(a, b) for a, b in zip(ref, got))  # clipped: the rounding differs
        assert all(torch.allclose(a, b, rtol=3e-7, atol=1e-8) for a, b in zip(ref, got))  # ~2 ulps at most
    else:
        assert all(torch.equal(a, b) for a, b in zip(ref, got))


def test_the_fused_adamw_step_leaves_other_optimizers_to_torch() -> None:
    from gptkit.optim import fused_adamw_step

    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.ones(3)
    unfused = torch.optim.AdamW([w], lr=0.1, fused=False)
    unfused.step()
    assert not fused_adamw_step(unfused, 1.0) and not fused_adamw_step(torch.optim.SGD([w], lr=0.1), 1.0)
    hooked = torch.optim.AdamW([w], lr=0.1, fused=True)
    hooked.step()
    hooked.register_step_post_hook(lambda *a: None)
    assert not fused_adamw_step(hooked, 1.0) and torch.equal(w.grad, torch.ones(3))  # nothing done


def test_training_on_the_cpu_never_imports_dynamo() -> None:
    """torch.optim imports torch._dynamo (~1 s) at an optimizer's first add_param_group, step, zero_grad or
    state_dict; gptkit's optimizer does all of them without it, and once something else has imported dynamo, the
    methods are dynamo-disabled as torch makes them."""
    code = """
import sys, torch
from gptkit.config import GPTConfig
from gptkit.model import GPT
from gptkit.optim import adamw, optimizer_step
model = GPT(GPTConfig.from_preset("gpt-nano", vocab_size=50, block_size=16))
opt = adamw(model, 1e-3, 0.1, (0.9, 0.95), 1e-8)
for _ in range(2):
    model(torch.zeros(2, 16, dtype=torch.long), targets=torch.ones(2, 16, dtype=torch.long)).backward()
    optimizer_step(model, opt, 1.0)
opt.load_state_dict(opt.state_dict())
opt.zero_grad()
assert "torch._dynamo" not in sys.modules
import torch._dynamo
saved = opt.state_dict()
fn = torch.optim.Optimizer.state_dict.__wrapped__
assert getattr(fn, "__dynamo_disable").__name__ != "call" and saved["state"][0]["step"].item() == 2.0
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_schedules() -> None:
    # cosine: a float64 recomputation of the formula at the middle of the decay
    assert warmup_cosine(60, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 2)) * 9e-4)
    assert warmup_cosine(0, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-3 / 11)
    assert warmup_cosine(0, 1e-3, 1e-4, 0, 110) == 1e-3  # no warmup: the peak at once
    assert warmup_linear(0, 10, 0, 1.0) == 1.0 and warmup_linear(5, 10, 0, 1.0) == 0.5


def test_the_live_display_tracks_each_bar() -> None:
    from gptkit.evaluate.runner import _tracker

    with Progress(live=False) as p:
        assert _tracker(p, "lambada (0-shot)") is None  # nothing shown: no callback to pay for
    with Progress(live=True) as p:  # rich, even off a terminal (what `gptkit eval` asks for unless --quiet)
        track = _tracker(p, "lambada (0-shot)")
        track(3, 10)
        [task] = p.bar.tasks
        assert (task.description, task.completed, task.total) == ("lambada (0-shot)", 3, 10)


def test_prepare_reports_through_the_shared_display(tmp_path, capsys) -> None:
    from gptkit.data.prepare import prepare

    (tmp_path / "a.txt").write_text("to be or not to be\n" * 200)
    prepare([str(tmp_path / "a.txt")], tmp_path / "out", tokenizer="char", progress=True, num_workers=1)
    err = capsys.readouterr().err
    assert "reading characters" in err and "tokenizing" in err  # its bars, drawn by gptkit.runtime.Progress
    prepare([str(tmp_path / "a.txt")], tmp_path / "out2", tokenizer="char", progress=False, num_workers=1)
    assert capsys.readouterr().err == ""


KEEP_FREED_CHILD = """
import ctypes, sys
import torch
from gptkit.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
before = libc.mallinfo2()
x = torch.ones(16 * 2**20)  # 64 MB
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
mapped = during.hblkhd - before.hblkhd >= 64 * 2**20  # its own mapping
from_heap = during.arena - before.arena >= 64 * 2**20
kept = after.arena >= during.arena  # the heap was not trimmed when it was freed
print(applied, mapped, from_heap, kept)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux) only")
def test_keep_freed_memory_serves_large_tensors_from_the_heap_and_keeps_them(monkeypatch) -> None:
    """glibc's default maps a 64 MB tensor with its own mmap (and unmaps it when freed); after
    keep_freed_memory it comes from the heap, and freeing it leaves the heap as large (kept for the next step)."""

    def child(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", KEEP_FREED_CHILD, mode], capture_output=True, text=True,
                              check=True, timeout=120).stdout.split()

    assert child("default")[:3] == ["False", "True", "False"]
    assert child("keep") == ["True", "False", "True", "True"]
    monkeypatch.setenv("GPTKIT_KEEP_FREED_MEMORY", "0")  # the switch benchmarks/train_memory.py compares with
    assert child("keep")[:3] == ["False", "True", "False"]
