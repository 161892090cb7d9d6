"""Where and how a command runs: the torch device, the autocast dtype, CPU threads, and the one progress display
that every long command (train, finetune, eval, prepare) shows.

Every command with a `--device`, `--dtype` or `--threads` flag resolves it here, so a bad value reads the same
everywhere (a one-line DeviceError) and no command imports the pre-training loop to pick a device. rich is
imported only when a live display is shown.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

import torch

from .errors import GptkitError


class DeviceError(GptkitError):
    """A `--device`, `--dtype` or `--threads` value this machine cannot honour."""


DEVICES = "cpu, cuda, cuda:N or auto"
DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_device(name: str):
    """The torch device a `--device` flag names (cpu, cuda, cuda:N or auto: CUDA when there is a GPU); an unknown
    or absent device is a one-line DeviceError."""

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {name!r} ({DEVICES})") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r} ({DEVICES})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name} was asked for but no CUDA GPU is available (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def pick_dtype(name: str, device):
    """The autocast dtype a `--dtype` flag names; auto is bfloat16 on a GPU that has it, else float32."""

    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise DeviceError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return dtypes[name]


def autocast(device, dtype) -> torch.autocast:
    """The autocast context of a run's `dtype` on `device` (a torch.device or its type); float32 turns it off."""
    kind = device if isinstance(device, str) else device.type
    return torch.autocast(kind, dtype=dtype, enabled=dtype != torch.float32)


def set_threads(n: int | None) -> None:
    """Use `n` CPU threads for torch's intra-op work (None: leave torch's own choice)."""
    if n is None:
        return
    if n < 1:
        raise DeviceError(f"--threads must be positive, got {n}")

    torch.set_num_threads(n)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def device_memory(device) -> int | None:
    """Bytes of memory a tensor on `device` can live in: the machine's RAM for the CPU, the GPU's total memory for
    CUDA; None where it cannot be told."""
    try:
        if getattr(device, "type", device) == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def keep_freed_memory() -> bool:
    """For training on a CPU: glibc serves large tensors from the heap, not from fresh mmap'd pages, and keeps what
    a step frees for the next step instead of returning it to the OS (mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB).
    By default every step's large activations are mapped and unmapped again, and the kernel zeroes each new page:
    that was 3.5 s of system time beside 23 s of user time in a 3 × 192 bf16 run, which these settings made 1.19×
    faster (docs/benchmarks.md). The process keeps its peak memory until it exits. Only where glibc is the C library;
    elsewhere, or with GPTKIT_KEEP_FREED_MEMORY=0 (benchmarks/train_memory.py), nothing changes. Returns whether
    it applied."""
    if not sys.platform.startswith("linux") or os.environ.get("GPTKIT_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, a static build): keep the C library's defaults
        return False


GPU_PEAK_BF16_FLOPS = {  # dense bf16 tensor-core peak, from the vendors' data sheets
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
    "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A10G": 125e12, "A10": 125e12, "L40S": 362e12,
    "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def gpu_peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s of a known GPU (by its CUDA name), None when unknown (then MFU is not shown)."""
    for key in sorted(GPU_PEAK_BF16_FLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return GPU_PEAK_BF16_FLOPS[key]
    return None


# ------------------------------------------------------------------------------------------ progress
class Progress:
    """The progress display of every long command, on stderr: live rich bars on a terminal; off a terminal,
    nothing but the lines a caller asks for (`update(..., line=True)`, `print`), so logs stay short.

    Its calls are rich's own (`add_task`, `update`, `start`, `stop`), so code that reports progress works the
    same with the live display or without one. `bytes=True` counts bytes (size and speed columns) instead of
    items (N/M). `quiet` silences everything; `live` None means "when stderr is a terminal".
    """

    def __init__(self, quiet: bool = False, live: bool | None = None, bytes: bool = False) -> None:
        self.quiet = quiet
        self.live = (sys.stderr.isatty() if live is None else live) and not quiet
        self.bar: Any = None
        self.tasks: dict[int, dict[str, Any]] = {}
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            count = (DownloadColumn(), TransferSpeedColumn()) if bytes else (MofNCompleteColumn(),)
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), *count,
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.bar.start()

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        """A new bar; returns its id for `update`."""
        if self.bar is not None:
            tid = self.bar.add_task(description, total=total, completed=completed, info="")
        else:
            tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total}
        return tid

    def update(self, task: int, completed: float | None = None, total: float | None = None, info: str | None = None,
               line: bool = False) -> None:
        """Move bar `task` to `completed` (and a new `total`, a new `info` text). Off a terminal, `line=True`
        prints it as one log line: `DESCRIPTION  N/TOTAL INFO`."""
        if total is not None:
            self.tasks[task]["total"] = total
        if self.bar is not None:
            fields = {"info": info} if info is not None else {}
            self.bar.update(task, completed=completed, total=total, **fields)
        elif line and not self.quiet:
            t = self.tasks[task]
            shown = f"{completed:>6}/{t['total']}" if t["total"] is not None else f"{completed:>6}"
            print(f"{t['description']} {shown}" + (f" {info}" if info else ""), file=sys.stderr, flush=True)

    def print(self, msg: str) -> None:
        """One message above the bars (or one plain line); nothing when quiet."""
        if self.bar is not None:
            self.bar.console.print(msg, markup=False, highlight=False)
        elif not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def start(self) -> None:
        if self.bar is not None:
            self.bar.start()

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    close = stop

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
