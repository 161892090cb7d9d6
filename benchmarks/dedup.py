"""`gptkit data dedup` on >= 100 MB of real paragraphs replicated with random edits: docs/s, MB/s, peak memory,
1 vs 2 worker processes, and the index's memory next to datasketch's MinHashLSH, in one run.

    python benchmarks/dedup.py [--mb 100] [--workdir /tmp/gptkit-bench-dedup] [--verify exact]

The corpus: every paragraph of the prose in ../shared/data (WikiText-2 raw and tokenized, SimpleBooks-92,
Alice, LAMBADA, HellaSwag contexts, Shakespeare's speeches) with at least 20 words, then documents drawn at random
from them (seeded) until --mb megabytes of JSONL: each a copy of a random paragraph with a per-word edit rate drawn
from {0 (exact copy) 10%, 0.5% 15%, 2% 15%, 5% 10%, 30% 50%} (an edit replaces, deletes or inserts a word). So
the stream has exact, near and far copies, as a crawl does. Written once to --workdir (not the repository) and
reused.

Each dedup run is a fresh `python` process (so its peak RSS is its own): `ru_maxrss` of the process that reads,
indexes and writes (RUSAGE_SELF) and of its largest worker (RUSAGE_CHILDREN; 0 with one process), and the CPU
seconds of each (user + system): on a loaded machine the wall-clock speed-up says little, the CPU split says where
the time goes (with 2 workers the wall time on idle cores is at least max(main CPU, workers CPU / 2)). The outputs of
the runs must be byte-identical (checked). The index comparison inserts as many random signatures as the run kept
documents with words into gptkit's index and into datasketch's MinHashLSH (same bands), each in a fresh process,
and reports the resident memory each holds afterwards.
CPU load is shared on the machines this was measured on: `uptime` is printed before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LEVELS = [(0.0, 0.10), (0.005, 0.15), (0.02, 0.15), (0.05, 0.10), (0.3, 0.50)]


def paragraphs() -> list[str]:
    """Real paragraphs (>= 20 words) from the prose in ../shared/data."""
    out: list[str] = []

    def add(units):
        out.extend(" ".join(u.split()) for u in units if len(u.split()) >= 20)

    for f in ("wikitext-2-raw/wiki.test.raw", "wikitext-2/valid.txt", "wikitext-2/test.txt"):
        add(ln for ln in (DATA / f).read_text("utf-8").splitlines() if not ln.strip().startswith("="))
    for f in ("simplebooks-92/valid.txt", "simplebooks-92/test.txt", "gutenberg-alice/wonderland.txt",
              "tinyshakespeare/input.txt"):
        add((DATA / f).read_text(encoding="utf-8-sig").split("\n\n"))
    add(json.loads(ln)["text"] for ln in (DATA / "lambada" / "lambada_test.jsonl").read_text().splitlines())
    lines = (DATA / "hellaswag" / "hellaswag_val_full.txt").read_text("utf-8").split("\n")
    add(lines[i] + " " + lines[i + 2] for i in range(0, len(lines) - 5, 6))
    return list(dict.fromkeys(out))  # distinct, in order


def edit(words: list[str], p: float, vocab: list[str], rng: random.Random) -> str:
    if p == 0:
        return " ".join(words)
    out = []
    for w in words:
        if rng.random() >= p:
            out.append(w)
            continue
        op = rng.randrange(3)
        if op == 0:
            out.append(rng.choice(vocab))
        elif op == 2:
            out.extend((w, rng.choice(vocab)))
    return " ".join(out)


def build_corpus(path: Path, mb: float, seed: int = 0) -> dict:
    meta_path = path.with_suffix(".meta.json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("mb") == mb and meta.get("seed") == seed and meta.get("bytes") == path.stat().st_size:
            return meta
    t0 = time.perf_counter()
    paras = paragraphs()
    split = [p.split() for p in paras]
    vocab = sorted({w for ws in split[:20000] for w in ws})
    rng = random.Random(seed)
    levels, weights = zip(*LEVELS)
    target, n, size = int(mb * 1e6), 0, 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        while size < target:
            k = rng.randrange(len(paras))
            p = rng.choices(levels, weights)[0]
            line = json.dumps({"id": n, "base": k, "edit": p, "text": edit(split[k], p, vocab, rng)}) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            n += 1
    os.replace(tmp, path)
    meta = {"mb": mb, "seed": seed, "bytes": path.stat().st_size, "documents": n, "paragraphs": len(paras),
            "paragraph_bytes": sum(len(p.encode()) for p in paras), "build_seconds": round(time.perf_counter() - t0, 1)}
    meta_path.write_text(json.dumps(meta))
    return meta


RUN = r"""
import json, resource, sys, time
sys.path.insert(0, {src!r})
from gptkit.data.dedup import dedup
t0 = time.perf_counter()
rep = dedup([{inp!r}], {out!r}, workers={workers}, verify={verify!r}, progress=False)
wall = time.perf_counter() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{"wall": wall, "self_kb": me.ru_maxrss, "children_kb": kids.ru_maxrss,
                  "self_cpu": me.ru_utime + me.ru_stime, "children_cpu": kids.ru_utime + kids.ru_stime,
                  "report": rep}}))
"""

# The same n random signatures into datasketch's MinHashLSH and into gptkit's index (band runs + exact-hash runs,
# in batches of 512 as dedup adds them), each in a fresh process: growth of the resident memory (Linux /proc).
INDEX = r"""
import json, resource, sys
sys.path.insert(0, {src!r})
import numpy as np
from datasketch import LeanMinHash, MinHashLSH
from gptkit.data.dedup import SortedRuns, band_keys
n, b, r = {n}, {b}, {r}
rng = np.random.default_rng(0)
sigs = rng.integers(0, 2**32, size=(n, 128), dtype=np.uint32)
content = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
def rss_kb():  # resident memory now (not the high-water mark, which earlier temporaries may have set)
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
before = rss_kb()
if {which!r} == "datasketch":
    lsh = MinHashLSH(num_perm=128, params=(b, r))
    for i in range(n):
        lsh.insert(i, LeanMinHash(seed=1, hashvalues=sigs[i], scheme="affine32"), check_duplication=False)
else:
    near, exact = SortedRuns(1), SortedRuns(2)
    for lo in range(0, n, 512):
        hi = min(lo + 512, n)
        near.add(band_keys(sigs[lo:hi], b, r).ravel(), np.repeat(np.arange(lo, hi), b))
        exact.add(content[lo:hi, 0].view(np.uint64), np.stack([np.arange(lo, hi), content[lo:hi, 1]], 1))
print(json.dumps({{"kb": rss_kb() - before}}))
"""


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size in MB (default 100)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gptkit-bench-dedup"))
    ap.add_argument("--verify", choices=("exact", "minhash"), default="exact")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    print(f"load before: {uptime()}")
    corpus = args.workdir / f"paragraphs-{args.mb:g}mb.jsonl"
    meta = build_corpus(corpus, args.mb)
    print(f"corpus: {meta['bytes'] / 1e6:.1f} MB, {meta['documents']:,} documents drawn from "
          f"{meta['paragraphs']:,} real paragraphs ({meta['paragraph_bytes'] / 1e6:.1f} MB); {corpus}")

    results = {}
    for w in args.workers:
        out = args.workdir / f"kept-{w}.jsonl"
        code = RUN.format(src=str(REPO / "src"), inp=str(corpus), out=str(out), workers=w, verify=args.verify)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            sys.exit(f"dedup with {w} worker(s) failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
        results[w] = r
        rep = r["report"]
        print(f"workers {w}: {r['wall']:.1f}s, {rep['documents_in'] / r['wall']:,.0f} docs/s, "
              f"{meta['bytes'] / 1e6 / r['wall']:.2f} MB/s, peak RSS main {r['self_kb'] / 1024:.0f} MB, "
              f"largest worker {r['children_kb'] / 1024:.0f} MB; CPU main {r['self_cpu']:.1f}s, workers "
              f"{r['children_cpu']:.1f}s; kept {rep['kept']:,}, exact "
              f"{rep['exact_duplicates_removed']:,}, near {rep['near_duplicates_removed']:,}")
    shas = {r["sha256"] for r in results.values()}
    print(f"outputs identical across worker counts: {len(shas) == 1}")
    if 1 in results and 2 in results:
        print(f"speed-up 2 vs 1 process(es): {results[1]['wall'] / results[2]['wall']:.2f}x")

    rep = next(iter(results.values()))["report"]
    kept_words = rep["kept"] - rep["documents_without_words"]
    b, r_ = rep["parameters"]["bands"], rep["parameters"]["rows"]
    kb = {}
    for which in ("gptkit", "datasketch"):
        proc = subprocess.run([sys.executable, "-c", INDEX.format(src=str(REPO / "src"), n=kept_words, b=b, r=r_,
                                                                  which=which)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"index memory ({which}) failed:\n{proc.stderr}")
        kb[which] = json.loads(proc.stdout)["kb"]
    print(f"index memory for {kept_words:,} kept documents ({b} bands x {r_} rows), resident memory held: "
          f"gptkit {kb['gptkit'] / 1024:.0f} MB ({kb['gptkit'] * 1024 / kept_words:.0f} B/doc), datasketch "
          f"MinHashLSH {kb['datasketch'] / 1024:.0f} MB ({kb['datasketch'] * 1024 / kept_words:.0f} B/doc); "
          f"ratio {kb['datasketch'] / max(kb['gptkit'], 1):.1f}x")
    print(f"load after: {uptime()}")


if __name__ == "__main__":
    main()
