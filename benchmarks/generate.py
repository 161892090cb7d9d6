"""Decoding speed: gptkit's generation core against Hugging Face `generate`, same weights, same run.

The GPT-2-small shape (124M parameters) with random weights, saved as a transformers GPT2LMHeadModel
directory and loaded by gptkit through its Hugging Face import path (GPT.from_pretrained). A 16-token prompt,
128 new tokens, batch 1, greedy, 2 threads; both sides use their KV cache, HF in float32. gptkit is timed as
`gptkit sample` runs it by default (`prepare_for_inference` with `--weights auto --blas auto`: the BLAS this CPU
was measured to decode the shape faster with, and fp16 weights where they were measured clearly faster than
that), with float32 weights through each BLAS, and as the plain model. Rounds alternate between the sides so that
load from other processes hits them alike; the ratio is taken per round, and the median reported.

Also printed: the memory-bandwidth roofline of the float32 model (every weight read once per token: bytes /
measured read speed), measured here with a large mat-vec, and that of the default's own bytes where it reads
fp16; the floor of the default path, its 49 matrix-vector products alone, back to back with nothing between them
(what no decoder built on the same products can beat); and optionally (--low-precision fp16 int8 bf16) gptkit with
lower-precision weights: fbgemm-packed fp16 or int8 (gptkit.generate.quantize_weights), or plain bfloat16
tensors, each with its quality cost against fp32: greedy tokens before the first difference, top-1 agreement and
KL divergence on the fp32 continuation, largest logit change.

    python benchmarks/generate.py                  # ~2 min on an idle machine
    python benchmarks/generate.py --rounds 5 --low-precision fp16 int8 bf16
    python benchmarks/generate.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch


def measure_read_bandwidth(seconds: float = 3.0) -> float:
    """GB/s reading a 256 MB fp32 matrix in a vector-matrix product (the access pattern of decoding), best of
    several, in whichever memory order MKL reads faster (here: the long side contiguous)."""
    W = torch.randn(1024, 16384 * 4)  # 256 MB: far beyond any cache
    x = torch.randn(1, 1024)
    layouts = (W, W.t().contiguous().t())  # (1024, 65536) row-major and column-major
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        for w in layouts:
            t = time.perf_counter()
            torch.mm(x, w)
            best = min(best, time.perf_counter() - t)
    return W.numel() * 4 / best / 1e9


def bytes_per_token(model) -> int:
    """Weights one decoding step reads: every matrix and vector, except the position table (one row)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if p.data_ptr() in seen or name.endswith("wpe.weight"):
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def products_floor(model, rounds: int = 20) -> float:
    """Median seconds of one decoding step's matrix-vector products alone, through the model's own layers (the
    BLAS and layout `prepare_for_inference` chose), back to back on one-row inputs: each block's four linears, then
    the output head. Numpy's BLAS runs as the Engine runs it: one torch thread, the BLAS on torch's count."""
    import contextlib

    from gptkit.generate import numpy_blas_has_the_cores, uses_numpy_blas

    layers = [m for b in model.transformer.h for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    layers.append(model.lm_head)
    xs = [torch.randn(1, 1, m.in_features) for m in layers]
    times = []
    threads = numpy_blas_has_the_cores() if uses_numpy_blas(model) else contextlib.nullcontext()
    with torch.inference_mode(), threads:
        for r in range(rounds + 2):
            t = time.perf_counter()
            for m, x in zip(layers, xs):
                m(x)
            if r >= 2:  # two untimed passes first
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def quantized_bytes(model, weight_bytes: int) -> int:
    """Bytes one step reads from a quantize_weights model: packed matrices + fp32 biases and norms."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, torch.ao.nn.quantized.dynamic.Linear):
            total += mod.in_features * mod.out_features * weight_bytes + mod.out_features * 4
        elif isinstance(mod, torch.nn.LayerNorm):
            total += sum(p.numel() * 4 for p in mod.parameters())
    return total


def time_hf(hf, idx: torch.Tensor, n: int) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        t = time.perf_counter()
        out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0, use_cache=True)
        return n / (time.perf_counter() - t), out[0, idx.size(1):]


def time_gptkit(model, idx: torch.Tensor, n: int) -> tuple[float, torch.Tensor]:
    from gptkit.generate import generate

    t = time.perf_counter()
    out = generate(model, idx, n, temperature=0.0)
    return n / (time.perf_counter() - t), out[0, idx.size(1):]


def quality(model32, model_lo, idx: torch.Tensor, n: int) -> dict:
    """How a low-precision copy differs from fp32 on one sequence: greedy continuations, and on the fp32
    continuation the top-1 agreement and largest logit difference."""
    from gptkit.generate import generate

    a = generate(model32, idx, n, temperature=0.0)
    b = generate(model_lo, idx, n, temperature=0.0)
    same_prefix = next((i for i in range(n) if a[0, idx.size(1) + i] != b[0, idx.size(1) + i]), n)
    with torch.inference_mode():
        l32 = model32(a).float()
        llo = model_lo(a).float()
    top1 = (l32.argmax(-1) == llo.argmax(-1)).float().mean().item()
    p32 = torch.log_softmax(l32, -1)
    plo = torch.log_softmax(llo, -1)
    kl = (p32.exp() * (p32 - plo)).sum(-1).mean().item()
    return {"greedy_tokens_equal_before_first_difference": same_prefix, "top1_agreement": top1,
            "max_abs_logit_diff": (l32 - llo).abs().max().item(), "mean_kl_nats": kl}


def lower(model, kind: str):
    """A lower-precision copy: bf16 tensors, or gptkit's fbgemm-packed fp16 / int8 weights."""
    import copy

    from gptkit.generate import quantize_weights

    return copy.deepcopy(model).to(torch.bfloat16) if kind == "bf16" else quantize_weights(model, kind)


def randomize_(model):
    """Weights whose activations are O(1) (linear N(0, 1/fan_in), embeddings N(0, 0.5²), LayerNorm gains
    1 + N(0, 0.2²)): peaked next-token distributions, unlike the near-uniform ones of an N(0, 0.02) init."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Embedding):
                mod.weight.copy_(0.5 * torch.randn(mod.weight.shape, generator=g))
            elif isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
            elif isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / mod.weight.shape[1] ** 0.5)
    return model


def val_loss(model, ids: torch.Tensor) -> float:
    """Mean next-token cross-entropy over windows of the context length."""
    block, losses = model.config.block_size, []
    with torch.inference_mode():
        for i in range(0, ids.size(1) - 1, block):
            x, y = ids[:, i:i + block], ids[:, i + 1:i + block + 1]
            x = x[:, :y.size(1)]
            logits = model(x).float()
            losses.append(torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item())
    return sum(losses) / (ids.size(1) - 1)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--low-precision", nargs="*", default=[], choices=["fp16", "int8", "bf16"],
                    help="also time lower-precision weights and measure their quality cost")
    ap.add_argument("--quality-ckpt", default=None, help="a trained checkpoint: also report its loss on "
                    "--quality-text with each lower precision")
    ap.add_argument("--quality-text", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                                  "tinyshakespeare" / "input.txt"))
    return ap.parse_args()


def gpt2_small_pair():
    """HF's GPT-2 small with transformers' own init (N(0, 0.02)) and gptkit's import of exactly those weights."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptkit import GPT

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(d)
        return GPT2LMHeadModel.from_pretrained(d).eval(), GPT.from_pretrained(d).eval()


def decoding_sides(hf, model, idx: torch.Tensor, n: int, bw: float) -> tuple[dict, object, object, str, str]:
    """What `gptkit sample` runs: --blas auto (which of numpy's BLAS and torch's, after inference_layout_, this CPU
    decodes this shape faster with) and --weights auto (fp16 where measured clearly faster than that fp32 path),
    each measured once and remembered (gptkit.autotune); both fp32 paths are timed too. Returns the sides to time,
    the default's model, the faster fp32 model, and the two choices."""
    from gptkit.generate import choose_blas, choose_weights, prepare_for_inference

    chosen = choose_blas(model)
    weights = choose_weights(model, 1, chosen)
    print(f"--blas auto chose {chosen}, --weights auto chose {weights} for this shape on this CPU")
    numpy_path = prepare_for_inference(copy.deepcopy(model), "fp32", blas="numpy")
    torch_path = prepare_for_inference(copy.deepcopy(model), "fp32", blas="torch")
    fast32 = {"numpy": numpy_path, "torch": torch_path}[chosen]
    fast = fast32 if weights == "fp32" else prepare_for_inference(copy.deepcopy(model), weights, blas=chosen)
    if weights != "fp32":
        own = quantized_bytes(fast, 2)
        print(f"the default reads {own / 1e6:.0f} MB of {weights} weights per token: its own roofline "
              f"{bw * 1e9 / own:.1f} tok/s (the roofline column below is the float32 model's)")
    sides = {"HF generate": lambda: time_hf(hf, idx, n), "gptkit, plain model": lambda: time_gptkit(model, idx, n)}
    for b, path in (("numpy", numpy_path), ("torch", torch_path)):
        if b != chosen or weights != "fp32":
            sides[f"gptkit fp32 --blas {b}"] = lambda path=path: time_gptkit(path, idx, n)
    sides[f"gptkit default (auto: {weights}, {chosen})"] = lambda: time_gptkit(fast, idx, n)
    time_hf(hf, idx, 8)  # warm up (allocator, BLAS libraries, thread pools)
    for m in (model, torch_path, numpy_path, fast):
        time_gptkit(m, idx, 8)
    return sides, fast, fast32, chosen, weights


def alternate(sides: dict, fast, rounds: int, roof: float) -> dict[str, list[float]]:
    """Each side in turn, `rounds` times; prints each round and the medians (tok/s, of the roofline, vs HF)."""
    rows: dict[str, list[float]] = {k: [] for k in sides}
    floor = "default's products alone (floor)"
    for r in range(rounds):
        toks = []
        for k, run in sides.items():
            tps, tok = run()
            rows[k].append(tps)
            toks.append(tok)
        same = all(torch.equal(toks[0], t) for t in toks[1:])
        rows.setdefault(floor, []).append(1 / products_floor(fast))  # the default's products alone, this round
        print(f"round {r + 1}: " + " | ".join(f"{k} {v[-1]:5.1f}" for k, v in rows.items()) +
              f" tok/s | same greedy tokens: {same} | load {os.getloadavg()[0]:.2f}", flush=True)
    for k, v in rows.items():
        med = statistics.median(v)
        ratio = statistics.median([x / h for x, h in zip(v, rows["HF generate"])])
        print(f"median {k:<36} {med:5.1f} tok/s  {med / roof:4.0%} of the roofline  {ratio:.2f}x HF  "
              f"(best {max(v):.1f})")
    return rows


def low_precision_report(model, fast32, kind: str, idx: torch.Tensor, n: int, args, fp32_median: float) -> None:
    """Weights lowered to `kind` from the plain model: speed against the faster fp32 path (alternating rounds in
    this run) and the quality cost, on random weights and (with --quality-ckpt) a trained model's loss."""
    from gptkit import GPT

    lo = lower(model, kind)
    lo_bytes = bytes_per_token(lo) if kind == "bf16" else quantized_bytes(lo, 1 if kind == "int8" else 2)
    time_gptkit(lo, idx, 8)
    tps = []
    for _ in range(args.rounds):  # alternate with fp32 again: the speed-up is a ratio within this run
        tps.append(time_gptkit(lo, idx, n)[0] / time_gptkit(fast32, idx, n)[0])
    print(f"{kind} weights: {statistics.median(tps):.2f}x the fp32 speed (median of {args.rounds} alternating "
          f"rounds, ~{statistics.median(tps) * fp32_median:.0f} tok/s at the fp32 median above); "
          f"{lo_bytes / 1e6:.0f} MB read per token")
    q = quality(model, lo, idx, n)
    print("  quality vs fp32, N(0, 0.02) random weights: " + ", ".join(f"{k} {v:.4g}" for k, v in q.items()))
    peaked = randomize_(copy.deepcopy(model))
    q = quality(peaked, lower(peaked, kind), idx, n)
    print("  quality vs fp32, O(1)-activation random weights: " + ", ".join(f"{k} {v:.4g}" for k, v in q.items()))
    if args.quality_ckpt:
        ref = GPT.from_pretrained(args.quality_ckpt).eval()
        text = Path(args.quality_text).read_text(encoding="utf-8")[-20000:]
        ids = torch.tensor([ref.tokenizer.encode(text)[-ref.config.block_size * 8:]])
        a, b = val_loss(ref, ids), val_loss(lower(ref, kind), ids)
        print(f"  {args.quality_ckpt}: loss on the last {ids.size(1)} tokens of {args.quality_text}: "
              f"fp32 {a:.4f}, {kind} {b:.4f} (+{b - a:.4f} nats/token)")


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    hf, model = gpt2_small_pair()
    idx = torch.randint(0, 50257, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    n = args.new_tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    bw = measure_read_bandwidth()
    nbytes = bytes_per_token(model)
    roof = bw * 1e9 / nbytes
    print(f"weights read per token {nbytes / 1e6:.0f} MB; measured read bandwidth {bw:.1f} GB/s "
          f"-> roofline {roof:.1f} tok/s")
    sides, fast, fast32, chosen, weights = decoding_sides(hf, model, idx, n, bw)
    rows = alternate(sides, fast, args.rounds, roof)
    fp32_key = f"gptkit fp32 --blas {chosen}" if weights != "fp32" else f"gptkit default (auto: {weights}, {chosen})"
    for kind in args.low_precision:
        low_precision_report(model, fast32, kind, idx, n, args, statistics.median(rows[fp32_key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
