"""The bodies the server reads and writes, as pydantic models: FastAPI validates requests with them (a bad field is a
400 naming it) and publishes them in /openapi.json. Response models only document the answers (the routes build
plain dicts, faster than validating every chunk); fields follow OpenAI's API reference.

No `from __future__ import annotations`: pydantic and FastAPI read these annotations at run time.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Int = Annotated[int, Field(strict=True)]
"""An integer as JSON writes one: not true/false, "2" or 2.0 (pydantic's lax mode took `"n": true` as 1 and a
prompt of [true, false] as token ids 1 and 0)."""
Bool = Annotated[bool, Field(strict=True)]
"""true or false, not "yes" or 1."""
Stop = str | list[str] | None
TEMPERATURE = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 is greedy; higher is more random")
TOP_P = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="nucleus sampling: sample among the most "
              "likely tokens whose probability reaches top_p")
TOP_K = Field(None, ge=1, description="(gptkit extension) sample among the k most likely tokens only")
PENALTY = Field(0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
STOP = Field(None, description="up to 16 strings that end the generation (not returned)")
SEED = Field(None, description="the same seed and parameters give the same text (choice i uses seed + i)")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: Bool = Field(False, description="end the stream with a chunk holding only `usage`")


# ------------------------------------------------------------------------------------------- completions
class CompletionRequest(BaseModel):
    """POST /v1/completions: continue each prompt."""

    model_config = ConfigDict(extra="ignore")
    model: str
    prompt: str | list[str] | list[Int] | list[list[Int]] = Field(
        description="text, a list of texts, token ids, or a list of token-id lists")
    max_tokens: Int | None = Field(16, ge=0, description="0 only scores the prompt (with echo and logprobs)")
    temperature: float | None = TEMPERATURE
    top_p: float | None = TOP_P
    top_k: Int | None = TOP_K
    n: Int = Field(1, ge=1, description="completions per prompt")
    best_of: Int | None = Field(None, ge=1, description="only best_of == n is supported")
    stream: Bool = False
    stream_options: StreamOptions | None = None
    logprobs: Int | None = Field(None, ge=0, le=20, description="log-probabilities of each token and of this "
                                 "many most likely alternatives")
    echo: Bool = Field(False, description="return the prompt before the completion (scored, with logprobs)")
    stop: Stop = STOP
    presence_penalty: float | None = PENALTY
    frequency_penalty: float | None = PENALTY
    seed: Int | None = SEED
    logit_bias: dict[str, float] | None = Field(None, description="not supported (400 when set)")
    suffix: str | None = Field(None, description="not supported (400 when set)")
    user: str | None = None


# ------------------------------------------------------------------------------------------------- chat
class ContentPart(BaseModel):
    """One part of a message's content: only `{"type": "text", "text": ...}` parts are supported."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions: the messages, rendered through the chat template, continued by the model."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(None, ge=0, description="default: the rest of the context")
    max_tokens: Int | None = Field(None, ge=0, description="the older name of max_completion_tokens")
    temperature: float | None = TEMPERATURE
    top_p: float | None = TOP_P
    top_k: Int | None = TOP_K
    n: Int = Field(1, ge=1)
    stream: Bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = Field(None, description="up to 16 strings that end the reply; default: the chat template's "
                       "turn separator, so a base model does not write the user's next turn")
    seed: Int | None = SEED
    logprobs: Bool = Field(False, description="return each generated token's log-probability")
    top_logprobs: Int | None = Field(None, ge=0, le=20, description="and this many most likely alternatives")
    presence_penalty: float | None = PENALTY
    frequency_penalty: float | None = PENALTY
    logit_bias: dict[str, float] | None = Field(None, description="not supported (400 when set)")
    tools: list[Any] | None = Field(None, description="not supported (400 when set)")
    tool_choice: Any = None
    functions: list[Any] | None = Field(None, description="not supported (400 when set)")
    function_call: Any = None
    response_format: dict[str, Any] | None = Field(None, description="only {'type': 'text'}")
    modalities: list[str] | None = Field(None, description="only ['text']")
    audio: Any = Field(None, description="not supported (400 when set)")
    user: str | None = None


# ------------------------------------------------------------------------------- answers (documentation)
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Choice(BaseModel):
    index: int
    logprobs: dict[str, Any] | None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionChoice(Choice):
    text: str


class Answer(BaseModel):
    """What every answer (and every stream chunk) starts with."""

    id: str
    created: int
    model: str


class Completion(Answer):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(Choice):
    message: AssistantMessage


class ChatCompletion(Answer):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why} for status, why in [
        (400, "invalid request (the field is named in `param`)"), (401, "missing or wrong API key"),
        (404, "unknown model"), (413, "body too large"), (429, "too many generations queued; retry later"),
        (500, "a bug (details only in the server's log)")]}
"""The error answers every /v1 POST route documents."""
