"""One `gptkit train` run as the training benchmarks measure it (train_dtype.py, train_memory.py).

The real command in a child process; its speed is the median tokens/s over the logged steps after the first (the
first holds the start-up), with the last validation loss, the dtype the run settled on, and the child's CPU time.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def gptkit_train(args: list[str], out: Path, env: dict | None = None) -> dict:
    """`python -m gptkit train ARGS --out OUT --quiet`: {tok_s, val, dtype, user, sys, wall, stderr}; exits with
    the run's stderr if it fails."""
    cmd = [sys.executable, "-m", "gptkit", "train", *args, "--out", str(out), "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env if env is not None else dict(os.environ), capture_output=True, text=True,
                         check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode:
        sys.exit(f"gptkit train failed ({' '.join(args)}):\n{res.stderr}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    speed = statistics.median(r["tokens_per_s"] for r in rows[1:]) if len(rows) > 1 else rows[0]["tokens_per_s"]
    return {"tok_s": speed, "val": rows[-1].get("val_loss"), "wall": wall, "stderr": res.stderr,
            "dtype": json.loads((out / "train_config.json").read_text())["dtype"],
            "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime}
