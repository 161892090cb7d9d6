"""Load test of `gptkit serve` on loopback: one client, then many concurrent clients, each for a bounded time.

The server is the real command (`python -m gptkit serve`, its own process) serving the GPT-2-small shape
(124M parameters, random weights) with GPT-2's tokenizer from ../shared/data. Clients are asyncio tasks in this
process, each sending one request after another (every other one streamed, as server-sent events): a prompt of
about 16 tokens cut from tinyshakespeare, `max_tokens` 32, temperature 0.8. With `--api mixed` (the default) the
requests alternate between /v1/completions and /v1/chat/completions (the prompt as one user message, rendered
through the chat template); `--api completions` or `--api chat` sends only one kind.

Reported per phase: requests, completion tokens/s, latency p50 / p99 (time to the last byte), time to the first
streamed chunk, and every failure: a 5xx, another status, or a dropped request (connection error, timeout,
truncated stream). The run passes when there are zero 5xx and zero dropped, and the many-client throughput is
at least --min-ratio (default 4) times the one-client throughput.

    python benchmarks/serve_load.py                       # 1 client × 60 s, then 16 clients × 60 s
    python benchmarks/serve_load.py --seconds 20 --clients 16
    python benchmarks/serve_load.py --seconds 5 --preset gpt-nano --min-ratio 0   # a smoke run: does it work
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Phase:
    clients: int
    seconds: float
    ok: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    first_chunk: list[float] = field(default_factory=list)
    status: dict[int, int] = field(default_factory=dict)
    dropped: int = 0
    wall: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.status.items() if s >= 500)

    def summary(self) -> str:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

        ttft = statistics.median(self.first_chunk) if self.first_chunk else float("nan")
        other = {s: n for s, n in self.status.items() if s != 200}
        return (f"{self.clients:>3} clients × {self.seconds:.0f} s: {self.ok} requests ok, "
                f"{self.tokens / self.wall:7.1f} completion tokens/s, latency p50 {pct(0.5):.2f} s "
                f"p99 {pct(0.99):.2f} s, first chunk p50 {ttft:.2f} s | 5xx {self.server_errors}, "
                f"other statuses {other or 0}, dropped {self.dropped}")


def prompts_from(corpus: Path, n: int, seed: int = 0) -> list[str]:
    lines = [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if len(ln.split()) >= 8]
    rng = random.Random(seed)
    return [" ".join(rng.choice(lines).split()[:10]) for _ in range(n)]


def request(api: str, i: int, model: str, prompt: str, max_tokens: int, stream: bool) -> tuple[str, dict]:
    """The path and body of request number i: a completion, or (chat, or every other one when mixed) a chat
    turn. Both answers carry `usage`, and their streams end with a usage chunk and [DONE]."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0.8, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if api == "chat" or (api == "mixed" and (i // 2) % 2 == 1):
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**body, "prompt": prompt}


async def client_loop(http, url: str, model: str, prompts: list[str], phase: Phase, deadline: float,
                      first_streams: bool, max_tokens: int, key: str, api: str) -> None:
    import httpx

    i = 0
    headers = {"authorization": f"Bearer {key}"}
    while time.monotonic() < deadline:
        stream = (i % 2 == 0) == first_streams  # every client alternates plain and streamed requests
        path, body = request(api, i, model, prompts[i % len(prompts)], max_tokens, stream)
        i += 1
        t0 = time.monotonic()
        try:
            if not stream:
                r = await http.post(f"{url}{path}", json=body, headers=headers)
                phase.status[r.status_code] = phase.status.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    phase.tokens += r.json()["usage"]["completion_tokens"]
                    phase.ok += 1
                    phase.latencies.append(time.monotonic() - t0)
                continue
            async with http.stream("POST", f"{url}{path}", json=body, headers=headers) as r:
                phase.status[r.status_code] = phase.status.get(r.status_code, 0) + 1
                if r.status_code != 200:
                    await r.aread()
                    continue
                done, usage, first = False, None, None
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if first is None:
                        first = time.monotonic() - t0
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        phase.status[500] = phase.status.get(500, 0) + 1
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                if not done or usage is None:
                    phase.dropped += 1  # the stream ended without its end marker
                    continue
                phase.tokens += usage["completion_tokens"]
                phase.ok += 1
                phase.latencies.append(time.monotonic() - t0)
                phase.first_chunk.append(first)
        except (httpx.TransportError, httpx.TimeoutException, json.JSONDecodeError) as e:
            phase.dropped += 1
            print(f"dropped: {type(e).__name__}: {e}", file=sys.stderr)


async def run_phase(url: str, model: str, prompts: list[str], clients: int, seconds: float, max_tokens: int,
                    key: str, api: str) -> Phase:
    import httpx

    phase = Phase(clients, seconds)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as http:
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.gather(*(client_loop(http, url, model, prompts[c::clients] or prompts, phase, deadline,
                                           first_streams=c % 2 == 1, max_tokens=max_tokens, key=key, api=api)
                               for c in range(clients)))
        phase.wall = time.monotonic() - t0  # includes finishing the requests begun before the deadline
    return phase


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_checkpoint(directory: Path, preset: str) -> None:
    """A random-weight model with GPT-2's tokenizer, as a gptkit checkpoint directory."""
    import torch

    from gptkit import GPT, Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_pretrained(SHARED / "gpt2-bpe-vocab")
    model = GPT.from_preset(preset, vocab_size=tok.vocab_size, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    model.tokenizer = tok
    model.save_pretrained(directory)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--preset", default="gpt2", help="model shape (random weights)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the server")
    ap.add_argument("--blas", choices=["auto", "numpy", "torch"], default="auto", help="the server's --blas")
    ap.add_argument("--min-ratio", type=float, default=4.0)
    ap.add_argument("--api", choices=["mixed", "completions", "chat"], default="mixed",
                    help="which endpoint the clients call (mixed: they alternate)")
    args = ap.parse_args()
    if not (SHARED / "gpt2-bpe-vocab").is_dir():
        print(f"needs {SHARED}/gpt2-bpe-vocab and tinyshakespeare", file=sys.stderr)
        return 2
    prompts = prompts_from(SHARED / "tinyshakespeare" / "input.txt", 256)
    key = "bench-key"
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "gpt2-random"
        write_checkpoint(ckpt, args.preset)
        port = free_port()
        env = {**os.environ, "GPTKIT_API_KEY": key, "PYTHONUNBUFFERED": "1"}
        server = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", "--ckpt", str(ckpt), "--port", str(port),
                                   "--max-batch", str(args.clients), "--threads", str(args.threads),
                                   "--blas", args.blas], env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.get(f"{url}/health", timeout=1)
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        print("the server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.3)
            print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
            asyncio.run(run_phase(url, "gpt2-random", prompts, 2, 5.0, args.max_tokens, key, args.api))  # warm up
            one = asyncio.run(run_phase(url, "gpt2-random", prompts, 1, args.seconds, args.max_tokens, key,
                                       args.api))
            print(one.summary(), flush=True)
            many = asyncio.run(run_phase(url, "gpt2-random", prompts, args.clients, args.seconds, args.max_tokens,
                                         key, args.api))
            print(many.summary(), flush=True)
            stats = httpx.get(f"{url}/health").json()
        finally:
            server.terminate()
            server.wait(timeout=30)
    ratio = (many.tokens / many.wall) / max(one.tokens / one.wall, 1e-9)
    print(f"load average after: {os.getloadavg()[0]:.2f}; server: {stats['steps']} steps, {stats['tokens']} tokens, "
          f"at most {stats['max_running']} generations decoded together")
    failures = one.server_errors + many.server_errors + one.dropped + many.dropped
    ok = failures == 0 and ratio >= args.min_ratio
    print(f"throughput {args.clients} clients / 1 client: {ratio:.2f}x (target >= {args.min_ratio}); "
          f"5xx + dropped: {failures} -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
