"""Text generation: the one core behind the Python API, `gptkit sample` and the server (gptkit.serve).

Leaf to root:

    filter_logits, sample_next   pure logits → token rules
    SamplingParams               what to generate: length, stops, greedy / temperature / top-k / top-p,
                                 presence and frequency penalties, seed, log-probabilities
    Detokenizer                  token ids → text pieces, never splitting a UTF-8 character
    Generation                   one prompt being continued: its tokens, text, log-probs, finish reason
    Engine                       continuous batching over one preallocated KV cache: generations join
                                 (a left-padded prefill) and leave (finished, cancelled) between decode steps
    complete, stream, generate   the Python API over the Engine

Decoding is memory-bound on a CPU: each new token reads every weight once, so the loop does as little else as
it can (no cache re-allocation or concatenation, no masks when every row is aligned, logits only for the last
position, everything under torch.inference_mode).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn
from threadpoolctl import ThreadpoolController
from torch.ao.quantization import float16_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

from . import autotune
from .errors import GptkitError

if TYPE_CHECKING:
    from .model import GPT, KVCache
    from .tokenizer import Tokenizer

FinishReason = Literal["length", "stop", "cancelled"]

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily (dividing logits by them could overflow float32)."""
MAX_LOGPROBS = 20
"""Most top alternatives reported per token (OpenAI's completions API allows 5)."""


class GenerationError(GptkitError, ValueError):
    """Generation parameters or prompts that cannot be honoured (one line, user-facing)."""


# ----------------------------------------------------------------------------------------- pure sampling rules
def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of probability mass top_p
    (Holtzman et al. 2020). logits (B, V) → (B, V). The most likely token always survives."""
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the mass *before* it already reaches top_p
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from the last-position logits (B, V) → ids (B, 1). temperature 0 means greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature < GREEDY_BELOW:  # 0, or so small that the division would overflow: greedy in effect
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# ------------------------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt. Defaults sample at temperature 1 from the full distribution."""

    max_new_tokens: int = 16
    """Tokens to generate (fewer when a stop ends the generation first). 0 only scores the prompt."""
    temperature: float = 1.0
    """Divides the logits; 0 means greedy (always the most likely token)."""
    top_k: int | None = None
    """Sample among the k most likely tokens only."""
    top_p: float | None = None
    """Sample among the smallest set of most likely tokens whose probability reaches top_p (nucleus)."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated (OpenAI's definition, -2..2)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was already generated (-2..2)."""
    stop: tuple[str, ...] = ()
    """Text that ends the generation; it is not part of the returned text. Needs a tokenizer."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end the generation (e.g. <|endoftext|>); they are not part of the returned text."""
    seed: int | None = None
    """Makes sampling reproducible: the same prompt and parameters give the same tokens."""
    logprobs: int | None = None
    """None: no log-probabilities. k >= 0: the chosen token's log-prob and the k most likely alternatives."""
    prompt_logprobs: bool = False
    """Also score the prompt's tokens (each given the tokens before it), e.g. for echo with logprobs."""

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Raise GenerationError naming the first bad field; return self."""
        def number(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise GenerationError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        number("temperature", 0.0, 100.0)
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise GenerationError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None:
            number("top_p", 0.0, 1.0)
            if self.top_p == 0.0:
                raise GenerationError("top_p must be in (0, 1], got 0")
        number("presence_penalty", -2.0, 2.0)
        number("frequency_penalty", -2.0, 2.0)
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise GenerationError("stop sequences must be non-empty strings")
        for t in self.stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or t < 0 or (vocab_size is not None and t >= vocab_size):
                raise GenerationError(f"stop token id {t!r} is not in the vocabulary")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise GenerationError(f"seed must be an integer, got {self.seed!r}")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise GenerationError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        return self

    @property
    def greedy(self) -> bool:
        """Temperature 0 (or below GREEDY_BELOW, where sampling is greedy in effect) picks the argmax."""
        return self.temperature < GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model, and the most likely alternatives at that position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    """(token id, log-prob) of the most likely tokens, most likely first."""


# ------------------------------------------------------------------------------------------- detokenization
class Detokenizer:
    """Turns a growing list of token ids into text, piece by piece, in time linear in the length.

    A byte-level BPE token can end in the middle of a UTF-8 character (the tokenizer then decodes it to U+FFFD):
    such text is held back until the character is complete. Only a short window of recent tokens is decoded
    each time, so tokenizers whose spacing depends on the neighbouring token still join pieces correctly.
    """

    MAX_PENDING = 8
    """Tokens after which a trailing U+FFFD is taken as real (it can be in the text itself)."""

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context[-4:])  # a little left context for the first piece
        self.prefix = 0  # ids[prefix:read] were already turned into text ...
        self.read = len(self.ids)
        self.prefix_text = tokenizer.decode(self.ids) if self.ids else ""  # ... and decode to this

    def push(self, token: int) -> str:
        """Add one token; return the new text it completes (often all of it, "" while a character is open)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if text.endswith("\ufffd") and len(self.ids) - self.read < self.MAX_PENDING:
            return ""
        delta = text[len(self.prefix_text):]
        # slide the window: the next decode starts where this one's new tokens begin
        self.prefix, self.read = self.read, len(self.ids)
        self.prefix_text = self.tokenizer.decode(self.ids[self.prefix:])
        if self.prefix > 64:  # keep the list short
            del self.ids[:self.prefix]
            self.read -= self.prefix
            self.prefix = 0
        return delta

    def flush(self) -> str:
        """Text still held back at the end of a generation (an unfinished character decodes as U+FFFD)."""
        if self.read == len(self.ids):
            return ""
        text = self.tokenizer.decode(self.ids[self.prefix:])
        delta = text[len(self.prefix_text):]
        self.prefix = self.read = len(self.ids)
        self.prefix_text = ""
        return delta


def stream_text(tokenizer, token_iter, ids_so_far: list[int]):
    """Yield printable text pieces as token ids arrive. Byte-level BPE tokens can split a UTF-8 character,
    so text is held back while the decoded tail is an incomplete character (see Detokenizer)."""
    detok = Detokenizer(tokenizer, ids_so_far)
    for tok in token_iter:
        ids_so_far.append(tok)
        piece = detok.push(tok)
        if piece:
            yield piece
    tail = detok.flush()
    if tail:
        yield tail


# ------------------------------------------------------------------------------------------------ generations
@dataclass(eq=False)
class Generation:
    """One prompt being continued. The Engine fills `tokens`, `text`, `logprobs` and `finish_reason`."""

    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    generator: torch.Generator | None = None
    """Random numbers for sampling; by default one seeded with params.seed, else torch's global generator."""
    tokens: list[int] = field(default_factory=list)
    """Generated token ids (a stop token, when one ended the generation, is the last)."""
    text: str = ""
    """Generated text, without the stop sequence or stop token (only with a tokenizer)."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    """With params.prompt_logprobs: None for the first prompt token, then one entry per prompt token."""
    finish_reason: FinishReason | None = None
    cancelled: bool = False
    """Set (from any thread) to have the engine drop this generation at its next step."""
    tag: object = None
    """Free for the caller (the server keeps its request and choice index here)."""
    # internal
    _emitted: int = field(default=0, repr=False)  # len(text) already handed out through events
    _detok: Detokenizer | None = field(default=None, repr=False)
    _counts: torch.Tensor | None = field(default=None, repr=False)  # (V,) times each token was generated
    _stop_scan: int = field(default=0, repr=False)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Ask the engine to stop this generation and free its row (safe from another thread)."""
        self.cancelled = True


@dataclass
class TokenEvent:
    """What one engine step did to one generation: a new token (and the text it completed), or its end."""

    generation: Generation
    token: int | None
    """The new token id; None when the generation ended without one (max_new_tokens 0, cancelled)."""
    text: str = ""
    """New text that is now final (text that may still turn out to start a stop sequence is held back)."""
    logprob: TokenLogprob | None = None
    finished: bool = False


def _holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop sequence: it may still become one,
    so a stream must not show it yet."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


# ------------------------------------------------------------------------------------------------ the engine
class Engine:
    """Continuous batching: many generations decoded together over one preallocated KV cache.

    Rows 0..n-1 of the cache hold the n running generations. Each `step()` first feeds every running row its
    newest token (one batched forward of n tokens; each row at its own cache index), then admits waiting
    generations into free rows (one left-padded prefill for the group), then samples one token for every
    row with each row's own parameters and random generator, so a seeded generation gives the same tokens
    whatever it is batched with. A finished or cancelled row is retired by moving the last row into its place.

    `slide=True` keeps the old `stream` behaviour beyond the context: the window slides and the cache is
    recomputed on the last block_size tokens. Otherwise prompt + max_new_tokens must fit the context.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer | None = None, *, max_batch: int = 8,
                 max_len: int | None = None, use_cache: bool = True, slide: bool = False,
                 max_prefill_tokens: int = 4096) -> None:
        if max_batch < 1:
            raise GenerationError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_len = min(max_len or self.config.block_size, self.config.block_size)
        self.max_batch = max_batch
        self.use_cache = use_cache
        self.slide = slide
        self.max_prefill_tokens = max_prefill_tokens
        weight = model.transformer.wte.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.vocab_size = self.config.vocab_size
        self.waiting: deque[Generation] = deque()
        self.rows: list[Generation] = []  # row i of the cache belongs to rows[i]
        self.pos: list[int] = []  # per row: cache index where its next token will be written
        self.start: list[int] = []  # per row: cache index of its first token (left padding before it)
        self.caches: list[KVCache] | None = None
        self._views: tuple[int, list[KVCache]] | None = None
        self.admitting: list[Generation] = []  # taken from `waiting` by the step now admitting them
        self._one_torch_thread = self.device.type == "cpu" and uses_numpy_blas(model)

    # --------------------------------------------------------------------------------------- public
    def submit(self, gen: Generation) -> Generation:
        """Queue a generation; it starts at a later `step()`. Raises GenerationError for what cannot run."""
        p = gen.params.validate(self.vocab_size)
        if not gen.prompt:
            raise GenerationError("the prompt is empty: give at least one token")
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size for t in gen.prompt):
            raise GenerationError(f"prompt token ids must be integers in [0, {self.vocab_size})")
        if p.stop and self.tokenizer is None:
            raise GenerationError("stop sequences need a tokenizer (the model has none attached)")
        if not self.slide and len(gen.prompt) + p.max_new_tokens > self.max_len:
            raise GenerationError(
                f"the prompt ({len(gen.prompt)} tokens) plus max_new_tokens ({p.max_new_tokens}) is "
                f"{len(gen.prompt) + p.max_new_tokens} tokens, more than the context ({self.max_len} tokens)")
        if p.prompt_logprobs and len(gen.prompt) > self.max_len:
            raise GenerationError(f"cannot score a prompt of {len(gen.prompt)} tokens: the context is "
                                  f"{self.max_len} tokens")
        if gen.generator is None and p.seed is not None:
            gen.generator = torch.Generator(device=self.device).manual_seed(p.seed)
        if self.tokenizer is not None:
            gen._detok = Detokenizer(self.tokenizer, gen.prompt)
        self.waiting.append(gen)
        return gen

    @property
    def busy(self) -> bool:
        """True while generations are running or waiting."""
        return bool(self.rows or self.waiting)

    def unfinished(self) -> list[Generation]:
        """Every generation the engine holds that has not ended: running, waiting, and those a step that raised
        was admitting (for a server to fail them, rather than leave their requests waiting for ever); each once,
        though a step that raised late has some of them in `rows` already."""
        running = {id(g) for g in self.rows}
        return [*self.rows, *(g for g in self.admitting if id(g) not in running), *self.waiting]

    def step(self) -> list[TokenEvent]:
        """Advance every running generation by one token and admit waiting ones; return what happened."""
        if self._one_torch_thread:
            with numpy_blas_has_the_cores():
                return self._step()
        return self._step()

    def _step(self) -> list[TokenEvent]:
        with torch.inference_mode():
            events = self._drop_cancelled()
            n_old = len(self.rows)
            parts = []
            if n_old:
                parts.append(self._decode())
            new_logits, more_events = self._admit()
            events += more_events
            if new_logits is not None:
                parts.append(new_logits)
            if not parts:
                self.admitting = []
                return events
            logits = parts[0] if len(parts) == 1 else torch.cat(parts)
            events += self._sample_and_emit(logits)
        self.admitting = []
        return events

    def run(self) -> Iterator[list[TokenEvent]]:
        """Step until nothing is running or waiting, yielding each step's events."""
        while self.busy:
            yield self.step()

    # ------------------------------------------------------------------------------------- the cache
    def _ensure_cache(self) -> None:
        if self.caches is None and self.use_cache:
            from .model import KVCache

            c = self.config
            self.caches = [KVCache(self.max_batch, c.n_head, self.max_len, c.head_size, self.device, self.dtype)
                           for _ in range(c.n_layer)]

    def _rows_view(self, first: int, last: int) -> list[KVCache]:
        assert self.caches is not None
        if first == 0:  # the decode step asks for the same view every step while the batch is unchanged
            if self._views is None or self._views[0] != last:
                self._views = (last, [c.rows(0, last) for c in self.caches])
            return self._views[1]
        return [c.rows(first, last) for c in self.caches]

    def _move_row(self, src: int, dst: int) -> None:
        self._copy_cache_row(src, dst, self.pos[src])
        self.rows[dst], self.pos[dst], self.start[dst] = self.rows[src], self.pos[src], self.start[src]

    def _copy_cache_row(self, src: int, dst: int, end: int) -> None:
        """Cache indices 0..end-1 of row `src` into row `dst`, every layer."""
        if self.caches is not None and src != dst:
            for c in self.caches:
                c.k[dst, :, :end] = c.k[src, :, :end]
                c.v[dst, :, :end] = c.v[src, :, :end]

    def _retire(self, indices: Iterable[int]) -> None:
        for r in sorted(set(indices), reverse=True):  # from the end, so moved rows are never retired twice
            last = len(self.rows) - 1
            if r != last:
                self._move_row(last, r)
            self.rows.pop()
            self.pos.pop()
            self.start.pop()
        self._views = None

    def _drop_cancelled(self) -> list[TokenEvent]:
        events = []
        for g in [g for g in self.waiting if g.cancelled]:
            self.waiting.remove(g)
        gone = [i for i, g in enumerate(self.rows) if g.cancelled]
        for i in gone:
            self.rows[i].finish_reason = "cancelled"
            events.append(TokenEvent(self.rows[i], None, finished=True))
        if gone:
            self._retire(gone)
        return events

    # -------------------------------------------------------------------------------------- forward
    def _context(self, g: Generation) -> list[int]:
        """Every token of the generation so far: the prompt and the generated tokens."""
        return g.prompt + g.tokens

    def _decode(self) -> torch.Tensor:
        """Feed each running row its newest token; return the next-token logits (n, V)."""
        model, n = self.model, len(self.rows)
        if not self.use_cache:  # reference path: a full forward over each row's last block_size tokens
            out = []
            for g in self.rows:
                ctx = self._context(g)[-self.config.block_size:]
                out.append(model(torch.tensor([ctx], device=self.device))[0, -1])
            return torch.stack(out).float()
        if self.slide:
            self._refill_full_rows()
        tokens = torch.tensor([[g.tokens[-1]] for g in self.rows], device=self.device)  # (n, 1)
        if all(p == self.pos[0] for p in self.pos) and not any(self.start):
            pos: int | torch.Tensor = self.pos[0]  # every row aligned: plain slices, no masks
            start = None
        else:
            pos = torch.tensor(self.pos, device=self.device)
            start = torch.tensor(self.start, device=self.device) if any(self.start) else None
        h = model.transformer(tokens, self._rows_view(0, n), pos, start)  # (n, 1, C)
        for i in range(n):
            self.pos[i] += 1
        return model.lm_head(h[:, -1]).float()  # (n, V)

    def _refill_full_rows(self) -> None:
        """Sliding window: a row whose cache (or position range) is full is recomputed on its last
        block_size - 1 tokens, at index 0, before its newest token is fed."""
        block = self.config.block_size
        for r, g in enumerate(self.rows):
            if self.pos[r] < self.max_len and self.pos[r] - self.start[r] < block:
                continue
            keep = self._context(g)[-block:-1]
            idx = torch.tensor([keep], device=self.device)
            self.model.transformer(idx, self._rows_view(r, r + 1), 0)
            self.pos[r], self.start[r] = len(keep), 0

    def _admit(self) -> tuple[torch.Tensor | None, list[TokenEvent]]:
        """Move waiting generations into free rows with one left-padded prefill; return the logits for
        their first new token (m, V) and the events of generations that ended right away."""
        events: list[TokenEvent] = []
        group: list[tuple[Generation, list[int]]] = []
        width = 0
        self.admitting = []  # until this step returns, the generations taken from `waiting` (see unfinished)
        while self.waiting and len(self.rows) + len(group) < self.max_batch:
            g = self.waiting[0]
            ctx = g.prompt[-self.config.block_size:] if self.slide else g.prompt
            if g.params.max_new_tokens == 0 and not g.params.prompt_logprobs:
                self.admitting.append(self.waiting.popleft())  # nothing to compute
                g.finish_reason = "length"
                events.append(TokenEvent(g, None, finished=True))
                continue
            w = max(width, len(ctx))
            fits = all(w + (0 if self.slide else x.params.max_new_tokens) <= self.max_len
                       for x, _ in [*group, (g, ctx)])
            if group and (not fits or w * (len(group) + 1) > self.max_prefill_tokens):
                break  # admitted at a later step
            self.admitting.append(self.waiting.popleft())
            group.append((g, ctx))
            width = w
        if not group:
            return None, events
        self._ensure_cache()
        m, first = len(group), len(self.rows)
        idx = torch.zeros((m, width), dtype=torch.long, device=self.device)
        starts = []
        for i, (g, ctx) in enumerate(group):
            idx[i, width - len(ctx):] = torch.tensor(ctx, device=self.device)
            starts.append(width - len(ctx))
        model = self.model
        if self.use_cache:
            start = torch.tensor(starts, device=self.device) if any(starts) else None
            h = model.transformer(idx, self._rows_view(first, first + m), 0, start)  # (m, width, C)
        else:
            h = torch.stack([model.transformer(idx[i:i + 1, s:])[0, -1:] for i, s in enumerate(starts)])
        logits = model.lm_head(h[:, -1]).float()  # (m, V)
        keep = []
        for i, (g, ctx) in enumerate(group):
            if g.params.prompt_logprobs:
                g.prompt_logprobs = self._score_prompt(h[i, starts[i]:] if self.use_cache else None, g)
            if g.params.max_new_tokens == 0:
                g.finish_reason = "length"
                events.append(TokenEvent(g, None, finished=True))
                continue
            self._copy_cache_row(first + i, len(self.rows), width)  # below a scored-only member: one row down
            keep.append(i)
            self.rows.append(g)
            self.pos.append(width)
            self.start.append(starts[i])
        self._views = None
        if not keep:
            return None, events
        return (logits if len(keep) == m else logits[keep]), events

    def _score_prompt(self, hidden: torch.Tensor | None, g: Generation) -> list[TokenLogprob | None]:
        """Log-prob of each prompt token given the ones before it (the first has none)."""
        if hidden is None:
            hidden = self.model.transformer(torch.tensor([g.prompt], device=self.device))[0]
        logp = torch.log_softmax(self.model.lm_head(hidden[:-1]).float(), dim=-1)  # (P-1, V)
        target = torch.tensor(g.prompt[1:], device=self.device)
        chosen = logp.gather(1, target[:, None])[:, 0].tolist()
        k = min(g.params.logprobs or 0, logp.size(-1))
        tops = torch.topk(logp, k, dim=-1) if k else None
        out: list[TokenLogprob | None] = [None]
        for j, t in enumerate(g.prompt[1:]):
            top = tuple(zip(tops.indices[j].tolist(), tops.values[j].tolist())) if tops is not None else ()
            out.append(TokenLogprob(t, chosen[j], top))
        return out

    # -------------------------------------------------------------------------------------- sampling
    def _sample_and_emit(self, logits: torch.Tensor) -> list[TokenEvent]:
        tokens, lps = self._sample(logits, self.rows)
        events, done = [], []
        for r, (g, t) in enumerate(zip(self.rows, tokens)):
            ev = self._append(g, t, lps[r])
            events.append(ev)
            if ev.finished:
                done.append(r)
        if done:
            self._retire(done)
        return events

    def _sample(self, logits: torch.Tensor, gens: list[Generation]) -> tuple[list[int], list[TokenLogprob | None]]:
        """One token per row (n, V) logits, each row with its own parameters and generator. Rows are computed
        independently of one another, so a row's result does not depend on the rest of the batch."""
        n = logits.size(0)
        lps: list[TokenLogprob | None] = [None] * n
        want_lp = [r for r, g in enumerate(gens) if g.params.logprobs is not None]
        if want_lp:  # log-probs of the model's own distribution, before penalties and temperature
            logp = torch.log_softmax(logits[want_lp], dim=-1)
        for r, g in enumerate(gens):
            if g.params.penalised:
                if g._counts is None:
                    g._counts = torch.zeros(self.vocab_size, device=logits.device)
                    if g.tokens:
                        g._counts.index_put_((torch.tensor(g.tokens, device=logits.device),),
                                             torch.ones(len(g.tokens), device=logits.device), accumulate=True)
                p = g.params
                logits[r] -= p.frequency_penalty * g._counts + p.presence_penalty * (g._counts > 0)
        chosen = [0] * n
        greedy = [r for r, g in enumerate(gens) if g.params.greedy]
        if greedy:
            best = (logits if len(greedy) == n else logits[greedy]).argmax(dim=-1).tolist()
            for r, t in zip(greedy, best):
                chosen[r] = t
        sampled = [r for r, g in enumerate(gens) if not g.params.greedy]
        if sampled:
            x = logits if len(sampled) == n else logits[sampled]
            temps = [gens[r].params.temperature for r in sampled]
            if any(t != 1.0 for t in temps):  # finite / temperature >= GREEDY_BELOW stays finite in fp32
                x = x / torch.tensor(temps, device=x.device)[:, None]
            filt = [i for i, r in enumerate(sampled) if gens[r].params.top_k or
                    (gens[r].params.top_p is not None and gens[r].params.top_p < 1.0)]
            if filt:
                x[filt] = self._filter(x[filt], [gens[sampled[i]].params for i in filt])
            # inverse-CDF sampling, one uniform number per row from the row's own generator
            cdf = torch.softmax(x, dim=-1).cumsum(dim=-1)
            u = torch.stack([torch.rand((), generator=gens[r].generator, device=x.device) for r in sampled])
            picked = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).clamp_(max=self.vocab_size - 1)
            for r, t in zip(sampled, picked[:, 0].tolist()):
                chosen[r] = t
        if want_lp:
            picked_lp = logp.gather(1, torch.tensor([chosen[r] for r in want_lp], device=logp.device)[:, None])
            kmax = min(max(gens[r].params.logprobs or 0 for r in want_lp), logp.size(-1))  # at most the vocabulary
            tops = torch.topk(logp, kmax, dim=-1) if kmax else None
            for i, r in enumerate(want_lp):
                k = gens[r].params.logprobs or 0
                top = tuple(zip(tops.indices[i, :k].tolist(), tops.values[i, :k].tolist())) if k else ()
                lps[r] = TokenLogprob(chosen[r], float(picked_lp[i, 0]), top)
        return chosen, lps

    @staticmethod
    def _filter(x: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Per-row top-k and top-p on (m, V) scaled logits: -inf outside. Same rule as filter_logits."""
        V = x.size(-1)
        sorted_x, order = torch.sort(x, descending=True, dim=-1, stable=True)
        rank = torch.arange(V, device=x.device)
        k = torch.tensor([min(p.top_k or V, V) for p in params], device=x.device)[:, None]  # any k: at most V
        top_p = torch.tensor([p.top_p if p.top_p is not None else 1.0 for p in params], device=x.device)[:, None]
        outside_k = rank >= k
        probs = torch.softmax(sorted_x.masked_fill(outside_k, float("-inf")), dim=-1)  # nucleus of the top-k
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = outside_k | ((before >= top_p) & (top_p < 1.0))
        drop_sorted[:, 0] = False  # the most likely token always survives
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        return x.masked_fill(drop, float("-inf"))

    # ------------------------------------------------------------------------------------ bookkeeping
    def _append(self, g: Generation, token: int, lp: TokenLogprob | None) -> TokenEvent:
        """Record a new token: text, stops, length. Returns the event to report."""
        p = g.params
        g.tokens.append(token)
        if lp is not None:
            g.logprobs.append(lp)
        if g._counts is not None:
            g._counts[token] += 1
        by_token = token in p.stop_token_ids
        if by_token:
            g.finish_reason = "stop"
        elif g._detok is not None:
            g.text += g._detok.push(token)
            if p.stop:
                self._check_stop(g)
        if g.finish_reason is None and len(g.tokens) >= p.max_new_tokens:
            g.finish_reason = "length"
        # the end (but a stop sequence, which has cut the text): what the detokenizer still holds is text too
        if g._detok is not None and (g.finish_reason == "length" or by_token):
            g.text += g._detok.flush()
            if p.stop:
                self._check_stop(g)
        if g.finished:
            end = len(g.text)
        else:
            end = len(g.text) - _holdback(g.text, p.stop) if p.stop else len(g.text)
        piece = g.text[g._emitted:end]
        g._emitted = max(g._emitted, end)
        return TokenEvent(g, token, piece, lp, g.finished)

    @staticmethod
    def _check_stop(g: Generation) -> None:
        """End the generation at the first stop sequence in its text, cutting the text there."""
        longest = max(len(s) for s in g.params.stop)
        scan_from = max(0, g._stop_scan - longest + 1)
        hits = [i for i in (g.text.find(s, scan_from) for s in g.params.stop) if i >= 0]
        g._stop_scan = len(g.text)
        if hits:
            g.text = g.text[:min(hits)]
            g.finish_reason = "stop"


# ------------------------------------------------------------------------------------ lower-precision weights
def inference_layout_(model: GPT) -> GPT:
    """Re-lay, in place, each weight matrix that has more rows than columns in column-major order, and return
    the model. Shapes, values and results stay the same; only the memory order changes.

    Decoding one token is a chain of matrix-vector products whose speed is memory bandwidth, and on CPU
    (MKL) a product can read a matrix faster when its long side is the contiguous one (how much depends on the
    CPU: benchmarks/generate.py measures it, docs/benchmarks.md records it). nn.Linear keeps (out, in)
    row-major, so the wide matrices (output head, c_attn, c_fc) are the ones to flip; F.linear then multiplies
    by a contiguous (in, out) matrix. For inference on CPU: training such a model works but is slower (the
    embedding rows become strided). No-op on other devices.
    """

    with torch.no_grad():
        for mod in model.modules():
            w = getattr(mod, "weight", None)
            if isinstance(mod, nn.Linear) and w.device.type == "cpu" and mod.out_features > mod.in_features \
                    and w.is_contiguous():
                w.data = w.data.t().contiguous().t()  # the tied output head is flipped once, for wte too
    return model


def packed_weights_supported() -> bool:
    """Whether this CPU and PyTorch build have fbgemm, which packs and multiplies `quantize_weights`'s fp16 and
    int8 weights (x86 with AVX2 or newer; not ARM, not older x86)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


def quantize_weights(model: GPT, kind: Literal["int8", "fp16"] = "int8", inplace: bool = False) -> GPT:
    """A copy of `model` (or with `inplace`, the model itself: no second float32 copy in memory) for CPU inference
    whose linear layers (attention, MLP and the output head) hold lower-precision weights in fbgemm's packed
    layout (PyTorch dynamic quantization); activations stay fp32.

    "int8": one scale per output channel, activations quantized on the fly; ~4× fewer bytes per token.
    "fp16": weights rounded to float16 (relative error ≤ 2^-11), products in fp32; ~2× fewer bytes.
    The token embedding stays fp32. Inference only: the copy cannot be trained or saved as a gptkit
    checkpoint. Measured speed and quality cost: docs/benchmarks.md.
    """

    if kind not in ("int8", "fp16"):
        raise GenerationError(f"weights must be 'int8' or 'fp16', got {kind!r}")
    if model.transformer.wte.weight.device.type != "cpu":
        raise GenerationError(f"{kind} weights are for CPU inference (their kernels are CPU-only)")
    if not packed_weights_supported():
        raise GenerationError(f"{kind} weights need fbgemm, PyTorch's x86 kernels for AVX2 and newer, which this "
                              f"CPU or PyTorch build lacks: use --weights fp32")
    qconfig, dtype = (per_channel_dynamic_qconfig, torch.qint8) if kind == "int8" else \
        (float16_dynamic_qconfig, torch.float16)
    clone = (model if inplace else copy.deepcopy(model)).eval()
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, not installed here
        warnings.simplefilter("ignore")
        quantize_dynamic(clone, {nn.Linear: qconfig}, dtype=dtype, inplace=True)
    clone.tokenizer = model.tokenizer
    return clone


class NumpyBlasLinear(torch.nn.Module):
    """A linear layer whose inference on CPU multiplies through numpy's BLAS (OpenBLAS, in numpy's wheels).

    Decoding is a chain of matrix-vector products bound by how fast the weights stream from memory, and the BLAS
    library is what sets that speed: which of OpenBLAS and the MKL inside PyTorch's CPU build streams a shape
    faster differs between CPUs, so `choose_blas` measures it (records: docs/benchmarks.md). The layer holds the
    very `weight` and `bias` Parameters of the nn.Linear it replaces, so names, the tied output head and
    state_dict are unchanged, and the weights stay in nn.Linear's (out, in) row-major order, which OpenBLAS reads
    fastest. With autograd on, off the CPU, or in another dtype it
    is exactly F.linear. Two thread pools (torch's OpenMP and OpenBLAS's) must not spin against each other: the
    Engine runs its steps with one torch thread while such layers are in the model.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if torch.is_grad_enabled() or x.device.type != "cpu" or not x.dtype == w.dtype == torch.float32:
            return torch.nn.functional.linear(x, w, b)
        rows = x.detach().reshape(-1, self.in_features).numpy()  # (N, in), a view when x is contiguous
        wn = w.detach().numpy()  # (out, in): a view, no copy
        y = wn @ rows[0] if rows.shape[0] == 1 else rows @ wn.T  # one row: BLAS gemv; more: gemm
        if b is not None:
            y += b.detach().numpy()
        return torch.from_numpy(y).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


_BLAS_POOLS: ThreadpoolController | None = None


def blas_threads(n: int):
    """A context in which numpy's BLAS runs on at most `n` threads: the cores torch was given (`--threads`).
    OpenBLAS otherwise starts one thread per core, and beside another busy process its threads wait on each other:
    decoding through it fell from 26 to 3 tokens/s at `--threads 1` with a training run on the other core
    (docs/benchmarks.md)."""
    global _BLAS_POOLS
    if _BLAS_POOLS is None:  # finding the loaded BLAS libraries takes ~0.5 ms; setting their limit, ~25 us
        _BLAS_POOLS = ThreadpoolController()
    return _BLAS_POOLS.limit(limits=n, user_api="blas")


@contextlib.contextmanager
def numpy_blas_has_the_cores():
    """A context for work through numpy's BLAS: it runs on the threads torch was given, while torch's own small ops
    stay on one thread. With both pools at two threads they spun against each other and decoding fell to 8
    tokens/s (docs/benchmarks.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_threads(threads):
            yield
    finally:
        torch.set_num_threads(threads)


def use_numpy_blas_(model: GPT) -> GPT:
    """Replace, in place, every nn.Linear of the model by a NumpyBlasLinear over the same Parameters; return the
    model. Results are those of nn.Linear up to float32 rounding (a different summation order)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, NumpyBlasLinear(child))
    return model


def uses_numpy_blas(model: torch.nn.Module) -> bool:
    """Whether `use_numpy_blas_` has swapped the model's linear layers (then the Engine steps with one torch
    thread)."""
    return any(isinstance(m, NumpyBlasLinear) for m in model.modules())


WEIGHTS = ("fp32", "fp16", "int8")
"""The weights a CPU decoder can read: float32, or the fbgemm-packed copies of `quantize_weights`."""

WEIGHTS_AUTO = ("fp32", "fp16")
"""What `--weights auto` chooses between, the exact path first (kept when they tie); int8 changes greedy
continuations within a few tokens (docs/benchmarks.md) and is only taken when asked for."""

BLAS_CHOICES = ("torch", "numpy")
"""The BLAS a CPU fp32 decoder multiplies through; the first is the simpler path, kept when they tie."""


def _decoding_products(n_embd: int, vocab_size: int, rows: int):
    """One decoding step's matrix products at this width (one block's four linears and the output head) on fresh
    random weights, with their inputs of `rows` rows, and a wrapper that repeats a pass over them enough times
    (~100 M multiply-adds) to time above the clock and scheduler noise."""
    shapes = [(3 * n_embd, n_embd), (n_embd, n_embd), (4 * n_embd, n_embd), (n_embd, 4 * n_embd),
              (vocab_size, n_embd)]
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=gen) for o, i in shapes]
    xs = {i: torch.randn(rows, i, generator=gen) for _, i in shapes}
    n = max(1, int(1e8 // (rows * sum(o * i for o, i in shapes))))
    return weights, xs, lambda fn: (lambda: [fn() for _ in range(n)])


def _blas_workloads(n_embd: int, vocab_size: int, rows: int, which: tuple[str, ...] = ("torch", "numpy")) -> dict:
    """The products of `_decoding_products` as each BLAS path would run them: numpy (OpenBLAS) over (out, in)
    row-major matrices with one torch thread, torch (MKL) over the column-major layout of `inference_layout_`."""
    weights, xs, repeat = _decoding_products(n_embd, vocab_size, rows)
    tw = [w.t().contiguous().t() if w.shape[0] > w.shape[1] else w for w in weights]
    nw = [w.contiguous().numpy() for w in weights]

    def run_torch() -> None:
        with torch.no_grad():
            for w in tw:
                torch.nn.functional.linear(xs[w.shape[1]], w)

    def run_numpy() -> None:
        with numpy_blas_has_the_cores():
            for w in nw:
                x = xs[w.shape[1]].numpy()
                w @ x[0] if rows == 1 else x @ w.T

    return {name: repeat(run) for name, run in (("torch", run_torch), ("numpy", run_numpy)) if name in which}


def _weights_workloads(n_embd: int, vocab_size: int, rows: int, blas: str) -> dict:
    """The products with fp32 weights through `blas` (as decoding runs them), and with fp16 weights packed by
    fbgemm as `quantize_weights` packs them. Decoding up to `rows` > 1 rows together (a server: from one client
    to a full batch), each candidate runs them at one row and then at `rows`, each ~100 M multiply-adds: one
    client counts as much as a full batch."""
    sizes = (1, rows) if rows > 1 else (1,)

    def at(r: int) -> dict:
        weights, xs, repeat = _decoding_products(n_embd, vocab_size, r)
        packed = [(torch.ops.quantized.linear_prepack_fp16(w, None), w.shape[1]) for w in weights]
        del weights

        def run_fp16() -> None:
            with torch.no_grad():
                for w, width in packed:
                    torch.ops.quantized.linear_dynamic_fp16(xs[width], w)

        return {"fp32": _blas_workloads(n_embd, vocab_size, r, (blas,))[blas], "fp16": repeat(run_fp16)}

    parts = [at(r) for r in sizes]
    return {name: (lambda name=name: [p[name]() for p in parts]) for name in ("fp32", "fp16")}


BLAS_SETTLE_S = 0.25
"""Pause before each timed BLAS workload. Alternating without one, OpenBLAS's threads went on spinning after the
numpy workload and took a core from the torch one: at two threads on a Xeon with AMX torch measured 25-74 ms
against 12-15 ms after a 0.2 s pause, and auto chose numpy, the slower path there (docs/benchmarks.md). Part of
the decision's key, so decisions measured without it are measured again."""


def choose_blas(model: GPT, rows: int = 1) -> str:
    """"torch" or "numpy" for decoding this model's shape on this CPU, measured once and remembered
    (gptkit.autotune): which BLAS streams the weights faster depends on the CPU (docs/benchmarks.md)."""

    c = model.config
    names = {"torch": "PyTorch's BLAS", "numpy": "numpy's BLAS (OpenBLAS)"}
    return autotune.choose("decoding blas", {"n_embd": c.n_embd, "vocab": c.vocab_size, "rows": rows,
                                             "threads": torch.get_num_threads(), "settle_s": BLAS_SETTLE_S},
                           BLAS_CHOICES, lambda: _blas_workloads(c.n_embd, c.vocab_size, rows), rounds=5,
                           settle_s=BLAS_SETTLE_S,
                           describe=lambda b: f"decoding multiplies through {names[b]} (--blas {b})")


WEIGHTS_MIN_GAIN = 0.10
"""`--weights auto` takes fp16 weights only where they were measured at least this much faster than fp32: fp32 is
the exact path, and fp16's rounding (relative 2^-11 a weight; KL to fp32 ~1e-7, a trained model's loss unchanged
to 4 decimals, docs/benchmarks.md) is worth taking only for a clear gain."""


def choose_weights(model: GPT, rows: int = 1, blas: str = "torch") -> str:
    """"fp32" or "fp16" weights for decoding this model's shape on this CPU, measured once and remembered
    (gptkit.autotune): fp16 reads half the bytes a token, but how much of that a CPU turns into speed depends on
    how fast it converts them (1.28× on a Xeon with AMX, 1.89× on an AMD EPYC: docs/benchmarks.md), and small
    models, whose weights sit in cache, may gain nothing. `rows` > 1 (a server's batch): timed at one row and at
    `rows` together (at 16 rows on the Xeon the two tie, at one row fp16 wins). fp32 where fbgemm is missing
    (`packed_weights_supported`)."""

    if not packed_weights_supported():
        return "fp32"
    c = model.config
    said = {"fp16": "decoding reads the weights as float16 on this CPU (--weights fp16; logits within ~1e-3 of "
                     "float32's; --weights fp32 for exact float32)",
            "fp32": "decoding keeps float32 weights on this CPU (--weights fp32)"}
    timed = f"1 and {rows}" if rows > 1 else 1  # what _weights_workloads times (and older decisions did not)
    return autotune.choose("decoding weights", {"n_embd": c.n_embd, "vocab": c.vocab_size, "rows": timed,
                                                "threads": torch.get_num_threads(), "blas": blas},
                           WEIGHTS_AUTO, lambda: _weights_workloads(c.n_embd, c.vocab_size, rows, blas), rounds=5,
                           min_gain=WEIGHTS_MIN_GAIN, settle_s=BLAS_SETTLE_S if blas == "numpy" else 0.0,
                           describe=lambda w: said[w])


def prepare_for_inference(model: GPT, weights: Literal["fp32", "fp16", "int8", "auto"] = "fp32",
                          blas: Literal["auto", "numpy", "torch"] = "auto", rows: int = 1) -> GPT:
    """The model `gptkit sample`, `chat` and `serve` decode with: eval mode, and then on CPU
    - fp32 weights multiplied through numpy's BLAS (`use_numpy_blas_`, in place), or with blas="torch" through
      PyTorch's own, re-laid for it by `inference_layout_` (in place); blas="auto" measures which is faster for
      this shape and `rows` prompts decoded together, once per machine (`choose_blas`);
    - or fp16/int8 weights (`quantize_weights`, in place);
    - weights="auto" (the commands' default): fp16 where measured clearly faster than the fp32 path for this
      shape on this CPU (`choose_weights`), else fp32.
    On other devices the model is only put in eval mode (auto: fp32)."""
    model.eval()
    if blas not in ("auto", *BLAS_CHOICES):
        raise GenerationError(f"blas must be 'auto', 'numpy' or 'torch', got {blas!r}")
    if weights not in ("auto", *WEIGHTS):
        raise GenerationError(f"weights must be 'auto', 'fp32', 'fp16' or 'int8', got {weights!r}")
    on_cpu = model.transformer.wte.weight.device.type == "cpu"
    if on_cpu and blas == "auto" and weights in ("auto", "fp32"):  # the fp32 path (auto weighs fp16 against it)
        blas = choose_blas(model, rows)
    if weights == "auto":
        weights = choose_weights(model, rows, blas) if on_cpu else "fp32"
    if weights != "fp32":
        return quantize_weights(model, weights, inplace=True)  # type: ignore[arg-type]
    if not on_cpu:
        return model
    return use_numpy_blas_(model) if blas == "numpy" else inference_layout_(model)


# -------------------------------------------------------------------------------------------- Python API
def _prompt_lists(model: GPT, prompts: torch.Tensor | Sequence[Sequence[int]] | Sequence[str] | str,
                  tokenizer: Tokenizer | None) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise GenerationError(f"a prompt tensor must be (B, T), got shape {tuple(prompts.shape)}")
        return prompts.tolist()
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise GenerationError("text prompts need a tokenizer (the model has none attached)")
            out.append(tokenizer.encode(p))
        else:
            out.append([int(t) for t in p])
    return out


def complete(model: GPT, prompts: torch.Tensor | Sequence[Sequence[int]] | Sequence[str] | str,
             params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
             tokenizer: Tokenizer | None = None, max_batch: int = 16, use_cache: bool = True,
             generator: torch.Generator | None = None) -> list[Generation]:
    """Continue every prompt (text, or token ids; lengths may differ) and return one finished Generation each.

    `params` is one SamplingParams for all prompts or one per prompt. Prompts are batched max_batch at a time.
    Beyond the context the window slides (the cache is recomputed on the last block_size tokens).
    """
    gens = list(iter_generations(model, prompts, params, tokenizer=tokenizer, max_batch=max_batch,
                                 use_cache=use_cache, generator=generator, events=False))
    return gens  # type: ignore[return-value]


def iter_generations(model: GPT, prompts: torch.Tensor | Sequence[Sequence[int]] | Sequence[str] | str,
                     params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
                     tokenizer: Tokenizer | None = None, max_batch: int = 16, use_cache: bool = True,
                     generator: torch.Generator | None = None, events: bool = True,
                     ) -> Iterator[TokenEvent] | Iterator[Generation]:
    """Stream the events of generating from `prompts` (see `complete`): one TokenEvent per new token per
    prompt, as they are produced. With events=False, yield the finished Generations in prompt order instead."""
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    ids = _prompt_lists(model, prompts, tok)
    plist = [params] * len(ids) if isinstance(params, SamplingParams) else list(params)
    if len(plist) != len(ids):
        raise GenerationError(f"{len(plist)} SamplingParams for {len(ids)} prompts")
    engine = Engine(model, tok, max_batch=max(1, min(max_batch, len(ids) or 1)), use_cache=use_cache, slide=True)
    gens = [engine.submit(Generation(p, sp, generator=generator)) for p, sp in zip(ids, plist)]
    was_training = model.training
    model.eval()
    try:
        for evs in engine.run():
            if events:
                yield from evs
    finally:
        for g in gens:
            g.cancel()
        model.train(was_training)
    if not events:
        yield from gens


def stream(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
           use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B, 1) one step at a time, continuing every row of idx (B, T).

    With the cache the prompt is processed once (prefill) and each step feeds one token per row. When the
    sequence outgrows the context, the window slides: the cache is recomputed on the last block_size tokens
    (learned positions cannot be reused at a new offset).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens <= 0:
        return
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=float(temperature),
                            top_k=top_k if top_k and top_k > 0 else None, top_p=top_p)
    B = idx.size(0)
    engine = Engine(model, max_batch=B, max_len=min(idx.size(1) + max_new_tokens, model.config.block_size),
                    use_cache=use_cache, slide=True, max_prefill_tokens=max(4096, B * idx.size(1)))
    rows = [engine.submit(Generation(p, params, generator=generator)) for p in idx.tolist()]
    was_training = model.training
    model.eval()
    try:
        while engine.busy:
            engine.step()
            yield torch.tensor([[g.tokens[-1]] for g in rows], device=idx.device)
    finally:
        model.train(was_training)


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Continue idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens)."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache))
    return torch.cat([idx, *new], dim=1) if new else idx
