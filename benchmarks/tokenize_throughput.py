"""GPT-2 encode throughput: gptkit's GPT2Tokenizer vs tiktoken vs Hugging Face, in one run.

    python benchmarks/tokenize_throughput.py [--file ../shared/data/tinyshakespeare/input.txt] [--repeats 5]

Every contender uses the same local GPT-2 files (../shared/data/gpt2-bpe-vocab) and must produce the same ids
(checked before timing). Three workloads:
  whole   one call on the whole text
  lines   one batch call on the text's lines
  chunks  one batch call on ~64 KB pieces of the text
MB/s is UTF-8 megabytes (1e6 bytes) per second, best of --repeats (median in brackets). The last column is
gptkit / tiktoken on the same workload.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

DATA = REPO.parent / "shared" / "data"


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", type=Path, default=DATA / "tinyshakespeare" / "input.txt")
    ap.add_argument("--vocab", type=Path, default=DATA / "gpt2-bpe-vocab")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="threads for batch calls (default: all cores)")
    args = ap.parse_args()

    import tiktoken
    import tokenizers
    import transformers
    from transformers import GPT2TokenizerFast

    from gptkit.tokenizer import GPT2Tokenizer, Tokenizer, split_at_word_boundaries

    text = args.file.read_text(encoding="utf-8")
    nbytes = len(text.encode("utf-8"))
    lines = text.splitlines(keepends=True)
    chunks = split_at_word_boundaries(text, 1 << 16)
    threads = args.threads or os.cpu_count() or 1

    tok = Tokenizer.from_pretrained(args.vocab)
    assert isinstance(tok, GPT2Tokenizer)
    enc = tok.encoding  # the very same tiktoken.Encoding, called directly
    with tempfile.TemporaryDirectory() as d:
        tok.save(d)  # vocab.json + merges.txt, which transformers reads
        hf = GPT2TokenizerFast.from_pretrained(d)
    backend = hf.backend_tokenizer  # the Rust `tokenizers` object under transformers

    # Same ids everywhere before any timing.
    ref = enc.encode_ordinary(text)
    assert tok.encode(text) == ref
    assert hf.encode(text) == ref
    by_line = tok.encode_batch(lines, num_threads=threads)  # lines alone differ from the whole text at "\n\n"
    assert by_line == enc.encode_ordinary_batch(lines, num_threads=threads)
    assert by_line == [e.ids for e in backend.encode_batch_fast(lines, add_special_tokens=False)]
    assert [i for ids in tok.encode_batch(chunks, num_threads=threads) for i in ids] == ref  # safe cuts

    print(f"file: {args.file} ({nbytes / 1e6:.2f} MB, {len(lines)} lines, {len(chunks)} chunks, {len(ref)} tokens)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python "
          f"{platform.python_version()}, tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}, "
          f"transformers {transformers.__version__}; batch threads {threads}; best of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f} (other processes share the cores when it exceeds 0)")

    contenders = {
        "whole": {
            "gptkit  encode": lambda: tok.encode(text),
            "tiktoken encode_ordinary": lambda: enc.encode_ordinary(text),
            "tokenizers encode": lambda: backend.encode(text, add_special_tokens=False),
            "transformers GPT2TokenizerFast": lambda: hf.encode(text),
        },
        "lines": {
            "gptkit  encode_batch": lambda: tok.encode_batch(lines, num_threads=threads),
            "tiktoken encode_ordinary_batch": lambda: enc.encode_ordinary_batch(lines, num_threads=threads),
            "tokenizers encode_batch_fast": lambda: backend.encode_batch_fast(lines, add_special_tokens=False),
            "transformers GPT2TokenizerFast": lambda: hf(lines)["input_ids"],
        },
        "chunks": {
            "gptkit  encode_batch": lambda: tok.encode_batch(chunks, num_threads=threads),
            "tiktoken encode_ordinary_batch": lambda: enc.encode_ordinary_batch(chunks, num_threads=threads),
            "tokenizers encode_batch_fast": lambda: backend.encode_batch_fast(chunks, add_special_tokens=False),
            "transformers GPT2TokenizerFast": lambda: hf(chunks)["input_ids"],
        },
    }

    print(f"\n{'workload':8} {'contender':34} {'MB/s best':>10} {'(median)':>9} {'gptkit/tiktoken':>16}")
    for workload, fns in contenders.items():
        results = {name: timed(fn, args.repeats) for name, fn in fns.items()}
        names = list(results)
        ratio = results[names[1]][0] / results[names[0]][0]  # time(tiktoken) / time(gptkit) = speed ratio
        for name, (best, med) in results.items():
            extra = f"{ratio:16.2f}" if name.startswith("gptkit") else ""
            print(f"{workload:8} {name:34} {nbytes / best / 1e6:10.2f} {nbytes / med / 1e6:9.2f} {extra}")


if __name__ == "__main__":
    main()
