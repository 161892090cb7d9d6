"""Streamed answers as server-sent events: one `data: {json}` line per chunk, then `data: [DONE]`. The async
generators here read a request's event queue (fed by the worker) and turn each token event into a chunk; when
the client goes away mid-stream, the generator is closed and the request's generations are cancelled."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from ..tokenizer import Tokenizer
from .errors import APIError
from .responses import chat_token, logprobs_block, prompt_entries, usage
from .worker import Live, unpack

DONE = "data: [DONE]\n\n"


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def events(q: asyncio.Queue, live: Live) -> AsyncIterator:
    """The worker's events for one request until its generations end (an error is raised as an APIError)."""
    while live:
        yield unpack(await q.get(), live)


async def framed(chunks: AsyncIterator[dict], live: Live,
                 tail: Callable[[], dict] | None = None) -> AsyncIterator[str]:
    """The events of a stream: each chunk, then (with include_usage) the usage chunk, then [DONE]. An error ends
    the stream with one error chunk (OpenAI's shape) instead; when the stream ends early (the client went away),
    the request's generations are cancelled and their rows freed. `tail` makes the usage chunk."""
    try:
        async for chunk in chunks:
            yield sse(chunk)
        if tail is not None:
            yield sse(tail())  # made now that the generations have ended
        yield DONE
    except APIError as e:
        yield sse(e.body())
    finally:
        live.abandon()


def completion_chunk(top: dict, i: int, text: str, lp: dict | None, finish_reason: str | None) -> dict:
    return {**top, "choices": [{"text": text, "index": i, "logprobs": lp, "finish_reason": finish_reason}]}


def usage_tail(top: dict, gens: list, prompt_tokens: int) -> Callable[[], dict]:
    """What makes the last chunk with include_usage: no choices, the usage."""
    return lambda: {**top, "choices": [], "usage": usage(prompt_tokens, gens)}


def completion_stream(tokenizer: Tokenizer, q: asyncio.Queue, live: Live, gens: list, top: dict, *, echo: bool,
                      logprobs: bool, include_usage: bool, prompt_tokens: int) -> AsyncIterator[str]:
    """A completions stream: per choice, with echo its prompt first, then one chunk per token event."""
    tail = usage_tail(top, gens, prompt_tokens) if include_usage else None
    return framed(completion_chunks(tokenizer, events(q, live), gens, top, echo, logprobs), live, tail)


class HeldLogprobs:
    """A streamed choice's token log-probs, each sent with the text it belongs to: an entry goes out once the text
    sent so far reaches past its offset. That is the non-streamed answer's rule (entries up to the text's length),
    so a stream never carries the entry of the stop token, nor those of a stop sequence cut from the text."""

    def __init__(self, tokenizer: Tokenizer, offset: int = 0) -> None:
        self.tokenizer, self.pending = tokenizer, []
        self.offset = self.sent = offset  # where the next entry's text starts; how much text has been sent

    def release(self, lp, text: str) -> list:
        """Take the event's log-prob (None: none) and text; return the entries whose text has now been sent."""
        if lp is not None:
            self.pending.append(lp)
        self.sent += len(text)
        out = []
        while self.pending and self.offset < self.sent:
            out.append(self.pending.pop(0))
            self.offset += len(self.tokenizer.decode([out[-1].token]))
        return out


async def completion_chunks(tokenizer: Tokenizer, evs: AsyncIterator, gens: list, top: dict, echo: bool,
                            logprobs: bool) -> AsyncIterator[dict]:
    held = {g.tag[1]: HeldLogprobs(tokenizer) for g in gens}
    echoed: set[int] = set()
    async for ev in evs:
        g = ev.generation
        i = g.tag[1]
        if echo and i not in echoed:  # the prompt first (scored by now, when logprobs are asked)
            echoed.add(i)
            text = tokenizer.decode(g.prompt)
            lp = logprobs_block(tokenizer, prompt_entries(g), 0) if logprobs else None
            held[i] = HeldLogprobs(tokenizer, len(text))
            yield completion_chunk(top, i, text, lp, None)
        offset = held[i].offset
        out = held[i].release(ev.logprob if logprobs else None, ev.text)
        if not ev.text and not out and not ev.finished:
            continue
        lp = logprobs_block(tokenizer, [(x.token, x) for x in out], offset) if out else None
        yield completion_chunk(top, i, ev.text, lp, g.finish_reason if ev.finished else None)


def chat_chunk(top: dict, i: int, delta: dict, lp: dict | None = None, finish_reason: str | None = None) -> dict:
    return {**top, "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}]}


def chat_stream(tokenizer: Tokenizer, q: asyncio.Queue, live: Live, gens: list, top: dict, *, logprobs: bool,
                include_usage: bool, prompt_tokens: int) -> AsyncIterator[str]:
    """A chat stream (`chat.completion.chunk`s): per choice a first delta with the role, one content delta per
    token event, an empty delta with the finish reason; with include_usage, a last chunk with usage only (and
    `usage: null` in the others, as OpenAI sends them)."""
    if include_usage:
        top = {**top, "usage": None}
    tail = usage_tail(top, gens, prompt_tokens) if include_usage else None
    return framed(chat_chunks(tokenizer, events(q, live), gens, top, logprobs), live, tail)


async def chat_chunks(tokenizer: Tokenizer, evs: AsyncIterator, gens: list, top: dict,
                      logprobs: bool) -> AsyncIterator[dict]:
    held = {g.tag[1]: HeldLogprobs(tokenizer) for g in gens}
    for g in sorted(gens, key=lambda g: g.tag[1]):
        yield chat_chunk(top, g.tag[1], {"role": "assistant", "content": ""})
    async for ev in evs:
        i = ev.generation.tag[1]
        out = held[i].release(ev.logprob if logprobs else None, ev.text)
        if ev.text or out:
            lp = {"content": [chat_token(tokenizer, x) for x in out]} if out else None
            yield chat_chunk(top, i, {"content": ev.text}, lp)
        if ev.finished:
            yield chat_chunk(top, i, {}, None, ev.generation.finish_reason)
