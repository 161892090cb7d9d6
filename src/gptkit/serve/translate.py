"""Requests → what the Engine runs: prompts as token ids and one SamplingParams per choice. Pure functions of
the request and the served model (no HTTP), raising APIError for what the schema cannot say."""

from dataclasses import dataclass

from ..chat_template import BrokenChatTemplate, ChatTemplate, ChatTemplateError
from ..errors import GptkitError
from ..generate import SamplingParams
from ..tokenizer import Tokenizer
from .config import ServeOptions
from .errors import APIError
from .schemas import ChatCompletionRequest, CompletionRequest

MAX_STOPS = 16
SEED_LIMIT = 2 ** 63


@dataclass(frozen=True)
class Served:
    """What translating a request needs to know of the model being served."""

    tokenizer: Tokenizer
    block_size: int
    vocab_size: int
    options: ServeOptions
    template: ChatTemplate

    @property
    def eot(self) -> int | None:
        return self.tokenizer.eot_id


def check_model(name: str, served: Served) -> None:
    if name != served.options.model_name:
        raise APIError(404, f"The model '{name}' does not exist; this server serves "
                       f"'{served.options.model_name}'", "not_found_error", param="model", code="model_not_found")


def check_common(req: CompletionRequest | ChatCompletionRequest, served: Served) -> None:
    """What both endpoints refuse alike: another model, logit_bias, a seed beyond 64 bits."""
    check_model(req.model, served)
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    if req.seed is not None and not -SEED_LIMIT <= req.seed < SEED_LIMIT - served.options.max_n:
        raise APIError(400, "seed must fit in a signed 64-bit integer", param="seed")


def check_completion(req: CompletionRequest, served: Served) -> None:
    check_common(req, served)
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of other than n is not supported", param="best_of")


def encode(text: str, served: Served, param: str) -> list[int]:
    try:
        return served.tokenizer.encode(text)
    except GptkitError as e:  # e.g. a character the vocabulary lacks
        raise APIError(400, f"cannot tokenize the {param}: {e}", param=param) from None


def prompts_of(req: CompletionRequest, served: Served) -> list[list[int]]:
    """The prompts of a completions request as token-id lists (text is encoded; ids are checked)."""
    p = req.prompt
    if isinstance(p, str):
        p = [p]
    if len(p) == 0:
        raise APIError(400, "prompt is an empty list", param="prompt")
    if all(isinstance(x, int) for x in p):
        p = [p]  # one prompt given as token ids
    out = []
    for x in p:
        if isinstance(x, str):
            ids = encode(x, served, "prompt")
            if not ids:  # the empty prompt: start a new document, as GPT-2 does
                if served.eot is None:
                    raise APIError(400, "empty prompt and this tokenizer has no <|endoftext|> token",
                                   param="prompt")
                ids = [served.eot]
        else:
            ids = list(x)
            if not ids:
                raise APIError(400, "a token-id prompt is empty", param="prompt")
            bad = [t for t in ids if not 0 <= t < served.vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} is not in the vocabulary (0..{served.vocab_size - 1})",
                               param="prompt")
        out.append(ids)
    return out


def stops_of(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(s == "" for s in stops):
        raise APIError(400, "stop sequences must be non-empty", param="stop")
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"at most {MAX_STOPS} stop sequences", param="stop")
    return tuple(stops)


def check_context(prompt_len: int, max_tokens: int, served: Served, param: str = "max_tokens") -> None:
    block = served.block_size
    if prompt_len + max_tokens > block:
        raise APIError(400, f"This model's maximum context length is {block} tokens, but {prompt_len + max_tokens}"
                       f" were requested ({prompt_len} in the prompt + {max_tokens} for the completion). "
                       f"Shorten the prompt or lower {param}.", param=param, code="context_length_exceeded")


def sampling(req: CompletionRequest | ChatCompletionRequest, served: Served, max_tokens: int,
             stop: tuple[str, ...], choice: int, logprobs: int | None,
             prompt_logprobs: bool = False) -> SamplingParams:
    """The SamplingParams of choice `choice` (its seed is the request's + choice, so choices differ)."""
    return SamplingParams(
        max_new_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
        top_p=req.top_p if req.top_p is not None and req.top_p < 1.0 else None, top_k=req.top_k,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        stop=stop, stop_token_ids=(served.eot,) if served.eot is not None else (),
        seed=None if req.seed is None else req.seed + choice, logprobs=logprobs, prompt_logprobs=prompt_logprobs)


def completion_params(req: CompletionRequest, served: Served, prompt_len: int, choice: int) -> SamplingParams:
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    check_context(prompt_len, max_tokens, served)
    return sampling(req, served, max_tokens, stops_of(req.stop), choice, req.logprobs,
                    prompt_logprobs=req.echo and req.logprobs is not None)


# -------------------------------------------------------------------------------------------------- chat
UNSUPPORTED = {"tools": "tools (function calling)", "functions": "functions (function calling)",
               "tool_choice": "tool_choice (function calling)", "function_call": "function_call (function calling)",
               "audio": "audio output"}


def check_chat(req: ChatCompletionRequest, served: Served) -> None:
    """Refuse, with OpenAI's 400, what a plain language model cannot do: tools, audio, images, JSON modes."""
    check_common(req, served)
    for name, what in UNSUPPORTED.items():
        if getattr(req, name) not in (None, [], "none"):
            raise APIError(400, f"{what} is not supported by this server", param=name)
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise APIError(400, "only response_format {'type': 'text'} is supported", param="response_format")
    if req.modalities and set(req.modalities) != {"text"}:
        raise APIError(400, "only the 'text' modality is supported", param="modalities")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as {"role", "content"} with text content: text parts are joined; anything else (images,
    audio, tool calls and tool results) is a 400."""
    out = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        if m.role in ("tool", "function") or (m.model_extra or {}).get("tool_calls"):
            raise APIError(400, f"{where}: tool calls and tool results are not supported by this server",
                           param="messages")
        content = m.content
        if isinstance(content, list):
            other = [p.type for p in content if p.type != "text"]
            if other:
                raise APIError(400, f"{where}: only text content is supported, got a {other[0]!r} part",
                               param="messages")
            content = "".join(p.text or "" for p in content)
        out.append({"role": m.role, "content": content or ""})
    return out


def chat_prompt(req: ChatCompletionRequest, served: Served) -> list[int]:
    """The messages rendered through the chat template, as token ids. A stored template may write special
    tokens (its end-of-turn marks) as text, so they are encoded as special; the plain transcript's are not, so
    a message cannot inject a document boundary."""

    try:
        text = served.template.render(chat_messages(req))
    except BrokenChatTemplate as e:  # the server's template is at fault, not the request
        raise APIError(500, str(e).replace("the chat template", "the server's chat template", 1), "server_error") \
            from None
    except ChatTemplateError as e:
        raise APIError(400, str(e), param="messages") from None
    if served.template.source is None:
        return encode(text, served, "messages")
    try:
        return served.tokenizer.encode(text, allowed_special="all")
    except GptkitError as e:
        raise APIError(400, f"cannot tokenize the messages: {e}", param="messages") from None


def chat_params(req: ChatCompletionRequest, served: Served, prompt_len: int, choice: int) -> SamplingParams:
    """max_completion_tokens (or its older name max_tokens; default the rest of the context), stop (default the
    template's turn separator; [] for none), top_logprobs alternatives when logprobs is on."""
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = max(served.block_size - prompt_len, 1)  # 1: an over-long prompt is refused just below
    check_context(prompt_len, max_tokens, served, param)
    stop = served.template.stop if req.stop is None else stops_of(req.stop)
    return sampling(req, served, max_tokens, stop, choice, (req.top_logprobs or 0) if req.logprobs else None)
