"""Response bodies, from finished generations (plain answers) or single events (stream chunks): OpenAI's
completions and chat shapes, log-probabilities, usage. Pure functions of the generations and the tokenizer."""

import time
import uuid

from ..generate import Generation, TokenLogprob
from ..tokenizer import Tokenizer


def head(kind: str, model_name: str) -> dict:
    """The fields every body (and every chunk) of one request shares: id, object, created, model."""
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model_name}


def usage(prompt_tokens: int, gens: list[Generation]) -> dict:
    completion_tokens = sum(len(g.tokens) for g in gens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def by_choice(gens: list[Generation]) -> list[Generation]:
    """Generations in choice order (`g.tag = (queue, choice index)`)."""
    return sorted(gens, key=lambda g: g.tag[1])


# ------------------------------------------------------------------------------------------- completions
def logprobs_block(tokenizer: Tokenizer, entries: list, offset: int, limit: int | None = None) -> dict:
    """OpenAI completions `logprobs` object for a run of (token id, TokenLogprob or None) entries (None: no
    score, the first prompt token), text offsets counted from `offset`, stopping at text offset `limit`."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for tok_id, lp in entries:
        s = tokenizer.decode([tok_id])
        if limit is not None and offset >= limit:
            break
        out["tokens"].append(s)
        out["token_logprobs"].append(None if lp is None else lp.logprob)
        out["top_logprobs"].append(None if lp is None else {tokenizer.decode([t]): v for t, v in lp.top})
        out["text_offset"].append(offset)
        offset += len(s)
    return out


def prompt_entries(g: Generation) -> list:
    """The prompt's (token id, TokenLogprob or None) entries, for echo."""
    return list(zip(g.prompt, g.prompt_logprobs or [None] * len(g.prompt)))


def completion_choice(g: Generation, tokenizer: Tokenizer, echo: bool, logprobs: bool) -> dict:
    text = (tokenizer.decode(g.prompt) if echo else "") + g.text
    lp = None
    if logprobs:
        entries = prompt_entries(g) if echo else []
        entries += [(x.token, x) for x in g.logprobs]
        lp = logprobs_block(tokenizer, entries, 0, limit=len(text))
    return {"text": text, "index": g.tag[1], "logprobs": lp, "finish_reason": g.finish_reason}


def completion(top: dict, gens: list[Generation], tokenizer: Tokenizer, echo: bool, logprobs: bool,
               prompt_tokens: int) -> dict:
    """The answer to a non-streamed completions request whose generations have all finished."""
    choices = [completion_choice(g, tokenizer, echo, logprobs) for g in by_choice(gens)]
    return {**top, "choices": choices, "usage": usage(prompt_tokens, gens)}


# -------------------------------------------------------------------------------------------------- chat
def chat_token(tokenizer: Tokenizer, lp: TokenLogprob) -> dict:
    """One entry of a chat `logprobs.content` list: the token, its log-prob, its UTF-8 bytes, alternatives."""
    def entry(t: int, logprob: float) -> dict:
        s = tokenizer.decode([t])
        return {"token": s, "logprob": logprob, "bytes": list(s.encode())}

    return {**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}


def chat_logprobs(tokenizer: Tokenizer, lps: list[TokenLogprob], limit: int | None = None) -> dict:
    """Chat `logprobs` ({"content": [...]}) of generated tokens, up to text length `limit` (a stop sequence's
    tokens, cut from the text, are left out too)."""
    content, length = [], 0
    for lp in lps:
        if limit is not None and length >= limit:
            break
        item = chat_token(tokenizer, lp)
        content.append(item)
        length += len(item["token"])
    return {"content": content}


def chat_choice(g: Generation, tokenizer: Tokenizer, logprobs: bool) -> dict:
    lp = chat_logprobs(tokenizer, g.logprobs, limit=len(g.text)) if logprobs else None
    return {"index": g.tag[1], "message": {"role": "assistant", "content": g.text}, "logprobs": lp,
            "finish_reason": g.finish_reason}


def chat_completion(top: dict, gens: list[Generation], tokenizer: Tokenizer, logprobs: bool,
                    prompt_tokens: int) -> dict:
    """The answer to a non-streamed chat request whose generations have all finished."""
    choices = [chat_choice(g, tokenizer, logprobs) for g in by_choice(gens)]
    return {**top, "choices": choices, "usage": usage(prompt_tokens, gens)}
