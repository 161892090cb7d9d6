"""How fast this machine trains a shape: a few real steps of `gptkit.train.train`, the code path the runs take.

A probe trains the shape for PROBE_STEPS steps in a temporary directory and reads the tokens/s the trainer logs
for its second half (the first half warms the allocator and kernels; the logged rate leaves evaluation out). The
result is cached per (shape, batch) for the life of the object, so a budget search measures each shape once.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..config import GPTConfig
from ..options.train import TrainConfig
from ..train import train
from .plan import BASE_PRESET

PROBE_STEPS = 6


class MeasuredSpeed:
    """speed(model config, batch size) -> training tokens per second on this machine, measured on `data_dir`."""

    def __init__(self, data_dir: str | Path, device: str = "auto", threads: int | None = None,
                 on_measure=None) -> None:
        self.data_dir, self.device, self.threads = str(data_dir), device, threads
        self.on_measure = on_measure  # called with (config, batch, tokens/s) after each probe (for the display)
        self.cache: dict[tuple, float] = {}

    def __call__(self, cfg: GPTConfig, batch_size: int) -> float:
        key = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size, batch_size)
        if key not in self.cache:
            self.cache[key] = self._probe(cfg, batch_size)
            if self.on_measure is not None:
                self.on_measure(cfg, batch_size, self.cache[key])
        return self.cache[key]

    def _probe(self, cfg: GPTConfig, batch_size: int) -> float:
        half = PROBE_STEPS // 2
        with tempfile.TemporaryDirectory(prefix="gptkit-speed-") as tmp:
            run = Path(tmp) / "probe"
            train(TrainConfig(data=self.data_dir, out=str(run), preset=BASE_PRESET, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size, dropout=0.0,
                              batch_size=batch_size, max_iters=PROBE_STEPS, warmup_iters=1, log_interval=half,
                              eval_interval=PROBE_STEPS, eval_iters=1, device=self.device, threads=self.threads,
                              quiet=True))
            lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return float(lines[-1]["tokens_per_s"])
