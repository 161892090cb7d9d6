"""The quickstart's recipe, chosen by measurement: variants of it trained for the same time budget, scored alike.

Each variant is `gptkit quickstart`'s training settings (gptkit.quickstart.DEFAULTS) with some flags changed,
trained by `gptkit train --max-minutes M` on the same prepared data, one after another; each final model is then
scored on the whole validation split in consecutive windows (the same scoring as benchmarks/vs_nanogpt.py), since
the trainer's own last evaluation reads only 10 random batches. Finished variants are read back from OUT, so a
killed sweep continues. What it found is in docs/pretraining.md ("The recipe").

    gptkit quickstart --out runs/quickstart                 # writes the plays' corpus and data once
    python benchmarks/quickstart_sweep.py --data runs/quickstart/data --out runs/qs-sweep --threads 2 \\
        "new=" "old=--n-layer 4 --n-embd 192 --lr 2e-3 --min-lr 2e-4" "2x128=--n-embd 128"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from vs_nanogpt import gptkit_val_loss

from gptkit.options.generator import flag_name
from gptkit.quickstart import DEFAULTS
from gptkit.train import TrainConfig


def flags_of(settings: dict) -> list[str]:
    """`gptkit train` flags for TrainConfig settings, in their public spellings."""
    flags = {f.name: flag_name(f) for f in dataclasses.fields(TrainConfig)}
    return [arg for k, v in settings.items() for arg in (flags[k], str(v))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", help="NAME=FLAGS: gptkit train flags that change the quickstart's "
                    "settings (NAME= alone: the quickstart as it is)")
    ap.add_argument("--data", required=True, help="a prepared data directory (the quickstart's: RUN/data)")
    ap.add_argument("--out", required=True, help="one run directory and one NAME.json per variant")
    ap.add_argument("--minutes", type=float, default=4.6, help="training budget of each run (the quickstart "
                    "hands ~4.6 of its 5 minutes to training)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in a.variants:
        name, _, flags = spec.partition("=")
        record = out / f"{name}.json"
        if not record.exists():
            run = out / name
            cmd = [sys.executable, "-m", "gptkit", "train", "--data", a.data, "--out", str(run), "--quiet",
                   "--max-minutes", str(a.minutes), "--threads", str(a.threads), *flags_of(DEFAULTS),
                   *shlex.split(flags)]
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - start
            settings = json.loads((run / "train_config.json").read_text())
            record.write_text(json.dumps({"name": name, "flags": flags, "wall_s": wall,
                                          "steps": settings["max_iters"], "dtype": settings["dtype"],
                                          "val": gptkit_val_loss(run, Path(a.data))}))
        rows.append(json.loads(record.read_text()))
    print(f"{'variant':<12} {'steps':>6} {'dtype':>9} {'wall s':>7} {'whole-val loss':>15}  flags")
    for r in sorted(rows, key=lambda r: r["val"]):
        print(f"{r['name']:<12} {r['steps']:>6} {r['dtype']:>9} {r['wall_s']:>7.0f} {r['val']:>15.4f}  {r['flags']}")


if __name__ == "__main__":
    main()
