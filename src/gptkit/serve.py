"""`gptkit serve`: an OpenAI-compatible completions server (FastAPI + uvicorn) over the generation Engine.

    POST /v1/completions   prompt (str, list of str, token ids, list of token-id lists), max_tokens, temperature,
                           top_p, top_k, n, stop, stream (server-sent events), logprobs, echo, seed,
                           presence_penalty, frequency_penalty
    GET  /v1/models        the one model served
    GET  /health           liveness and load

One worker thread owns the model and the Engine (continuous batching): concurrent requests are decoded
together, one batched forward per token, so throughput grows with load. Request handlers run on the asyncio
loop; they validate, tokenize and hand generations to the worker, which sends events back to the loop.

Errors follow OpenAI's shape, {"error": {"message", "type", "param", "code"}}: invalid input → 400 (prompt +
max_tokens beyond the context included), missing or wrong key when --api-key is set → 401, unknown model → 404,
body over --max-body-bytes → 413, more generations queued than --max-queue → 429. A client that disconnects
(mid-stream or while waiting) has its generations cancelled and their rows freed at the next step.

fastapi, pydantic and uvicorn are imported only when the server is built, so `gptkit --help` stays fast (and
this module deliberately has no `from __future__ import annotations`: FastAPI reads the annotations of the
handlers defined inside `create_app`).
"""

import argparse
import hmac
import json
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from .errors import GptkitError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
CHECK_S = 0.5  # how often a non-streamed request looks whether its client is still there


@dataclass
class ServeOptions:
    """What `gptkit serve` is told besides the model."""

    model_name: str = "gptkit"
    api_key: str | None = None
    """When set, /v1/* requests need `Authorization: Bearer <api_key>`."""
    max_batch: int = 16
    """Generations decoded together (rows of the KV cache)."""
    max_queue: int = 64
    """Generations that may wait for a row; more → 429."""
    max_body_bytes: int = 1 << 20
    max_n: int = 16
    """Most generations (n × prompts) one request may ask for."""
    max_prefill_tokens: int = 2048
    """Prompt tokens prefilled in one step (bounds how long running streams pause for newcomers)."""


# ---------------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered to the client in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


async def _send_error(send, err: APIError) -> None:
    """Answer an error from plain ASGI (before FastAPI sees the request)."""
    body = _json_bytes(err.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """API key and body size, checked before a request reaches FastAPI (so an unauthenticated or oversized
    request is never parsed). The body is read here, up to the limit, and replayed to the app."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"].startswith("/v1"):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                why = "Incorrect API key provided" if given else "Missing API key: send 'Authorization: Bearer KEY'"
                return await _send_error(send, APIError(401, why, "invalid_request_error", code="invalid_api_key"))
        too_big = APIError(413, f"request body is larger than the limit of {self.max_body} bytes",
                           "invalid_request_error", code="request_too_large")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _send_error(send, APIError(400, "invalid Content-Length header"))
            if declared > self.max_body:
                await self._drain(receive, limit=16 * self.max_body)  # so the client reads our answer
                return await _send_error(send, too_big)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body:
                if more:  # read the rest (up to a point) so that the client gets to read our answer
                    await self._drain(receive, limit=16 * self.max_body)
                return await _send_error(send, too_big)
            chunks.append(chunk)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then disconnect notices come through as usual

        await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive, limit: int) -> None:
        size = 0
        while size <= limit:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            size += len(message.get("body", b""))


# ---------------------------------------------------------------------------------------------- the worker
class Worker:
    """The thread that owns the Engine. Handlers `submit` generations; each event goes back to the asyncio
    loop, to the queue of the request that owns the generation (`generation.tag = (queue, choice index)`)."""

    def __init__(self, make_engine, loop: "asyncio.AbstractEventLoop") -> None:  # noqa: F821 (imported lazily)
        self.make_engine = make_engine
        self.engine = make_engine()
        self.loop = loop
        self.inbox: queue.Queue[list] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gptkit-engine", daemon=True)
        self.in_flight = 0  # generations submitted and not finished; touched on the loop thread only
        self.stats = {"steps": 0, "tokens": 0, "max_running": 0, "finished": 0, "cancelled": 0}

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def submit(self, gens: list) -> None:
        self.in_flight += len(gens)
        self.inbox.put(gens)

    def _deliver(self, gen, item) -> None:
        q, _ = gen.tag
        try:
            self.loop.call_soon_threadsafe(q.put_nowait, item)
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while not self.stopping.is_set():
            try:
                block = not self.engine.busy
                gens = self.inbox.get(timeout=0.1) if block else self.inbox.get_nowait()
            except queue.Empty:
                gens = None
            while gens is not None:
                for g in gens:
                    try:
                        self.engine.submit(g)
                    except GptkitError as e:  # validated before, but never let one request stop the loop
                        self._deliver(g, (g, e))
                try:
                    gens = self.inbox.get_nowait()
                except queue.Empty:
                    gens = None
            if not self.engine.busy:
                continue
            try:
                events = self.engine.step()
            except Exception as e:  # a bug: fail what is running, start afresh, keep serving
                traceback.print_exc()
                for g in [*self.engine.rows, *self.engine.waiting]:
                    self._deliver(g, (g, e))
                self.engine = self.make_engine()
                continue
            st = self.stats
            st["steps"] += 1
            st["max_running"] = max(st["max_running"], len(self.engine.rows) + sum(ev.finished for ev in events))
            for ev in events:
                st["tokens"] += ev.token is not None
                if ev.finished:
                    st["cancelled" if ev.generation.finish_reason == "cancelled" else "finished"] += 1
                self._deliver(ev.generation, ev)


# ------------------------------------------------------------------------------------------ the HTTP app
def _token_str(tokenizer, t: int) -> str:
    return tokenizer.decode([t])


def _logprobs_block(tokenizer, entries: list, offset: int, limit: int | None = None) -> dict:
    """OpenAI completions `logprobs` object for a run of TokenLogprob entries (None = no score, first token)."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for tok_id, lp in entries:
        s = _token_str(tokenizer, tok_id)
        if limit is not None and offset >= limit:
            break
        out["tokens"].append(s)
        out["token_logprobs"].append(None if lp is None else lp.logprob)
        out["top_logprobs"].append(None if lp is None else {_token_str(tokenizer, t): v for t, v in lp.top})
        out["text_offset"].append(offset)
        offset += len(s)
    return out


def _need_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise GptkitError(f"gptkit serve needs fastapi and uvicorn ({e.name} is missing): "
                          f"pip install 'gptkit[serve]'") from None


def create_app(model, tokenizer, options: ServeOptions):
    """The ASGI application serving `model` (a GPT, put in eval mode; `gptkit serve` first readies it with
    `prepare_for_inference`) with `tokenizer`: FastAPI behind GuardMiddleware. Start it with uvicorn; its worker
    thread starts and stops with the app (lifespan)."""
    import asyncio  # here, not at the top: `gptkit --help` builds this module's parser and should stay fast
    import contextlib
    import uuid

    _need_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .generate import Engine, Generation, GenerationError, SamplingParams

    block = model.config.block_size
    model.eval()
    eot = tokenizer.eot_id

    def make_engine() -> Engine:
        return Engine(model, tokenizer, max_batch=options.max_batch,
                      max_prefill_tokens=max(options.max_prefill_tokens, block))

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        prompt: str | list[str] | list[int] | list[list[int]]
        max_tokens: int | None = Field(16, ge=0)
        temperature: float | None = Field(1.0, ge=0.0, le=2.0)
        top_p: float | None = Field(1.0, gt=0.0, le=1.0)
        top_k: int | None = Field(None, ge=1)
        n: int = Field(1, ge=1)
        best_of: int | None = Field(None, ge=1)
        stream: bool = False
        stream_options: dict | None = None
        logprobs: int | None = Field(None, ge=0, le=20)
        echo: bool = False
        stop: str | list[str] | None = None
        presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
        frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
        seed: int | None = None
        logit_bias: dict[str, float] | None = None
        suffix: str | None = None
        user: str | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.worker = Worker(make_engine, asyncio.get_running_loop())
        app.state.worker.start()
        try:
            yield
        finally:
            app.state.worker.stop()

    app = FastAPI(title="gptkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = loc[0] if loc else None
        where = ".".join(loc)
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, param, where = "the request body is not valid JSON", None, ""
        elif first.get("type") == "missing" and not loc:
            msg = "the request body is missing (expected a JSON object)"
        return JSONResponse(APIError(400, f"{where}: {msg}" if where else msg, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: say so without details
        traceback.print_exception(exc)
        return JSONResponse(APIError(500, "internal server error", "server_error").body(), status_code=500)

    @app.get("/health")
    async def health(request: Request):
        w: Worker = request.app.state.worker
        return {"status": "ok", "model": options.model_name, "running": len(w.engine.rows),
                "waiting": len(w.engine.waiting), "in_flight": w.in_flight, **w.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": 0,
                                            "owned_by": "gptkit", "max_model_len": block}]}

    def prompts_of(req: CompletionRequest) -> list[list[int]]:
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
                try:
                    ids = tokenizer.encode(x)
                except GptkitError as e:  # e.g. a character the vocabulary lacks
                    raise APIError(400, f"cannot tokenize the prompt: {e}", param="prompt") from None
                if not ids:  # the empty prompt: start a new document, as GPT-2 does
                    if eot is None:
                        raise APIError(400, "empty prompt and this tokenizer has no <|endoftext|> token",
                                       param="prompt")
                    ids = [eot]
            else:
                ids = list(x)
                if not ids:
                    raise APIError(400, "a token-id prompt is empty", param="prompt")
                bad = [t for t in ids if not 0 <= t < model.config.vocab_size]
                if bad:
                    raise APIError(400, f"token id {bad[0]} is not in the vocabulary "
                                   f"(0..{model.config.vocab_size - 1})", param="prompt")
            out.append(ids)
        return out

    def params_of(req: CompletionRequest, prompt_len: int, choice: int) -> SamplingParams:
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if prompt_len + max_tokens > block:
            raise APIError(400, f"This model's maximum context length is {block} tokens, but {prompt_len + max_tokens}"
                           f" were requested ({prompt_len} in the prompt + {max_tokens} for the completion). "
                           f"Shorten the prompt or lower max_tokens.", param="max_tokens",
                           code="context_length_exceeded")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(s == "" for s in stop):
            raise APIError(400, "stop sequences must be non-empty", param="stop")
        if len(stop) > 16:
            raise APIError(400, "at most 16 stop sequences", param="stop")
        temperature = 1.0 if req.temperature is None else req.temperature
        return SamplingParams(
            max_new_tokens=max_tokens, temperature=temperature,
            top_p=req.top_p if req.top_p is not None and req.top_p < 1.0 else None, top_k=req.top_k,
            presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
            stop=tuple(stop), stop_token_ids=(eot,) if eot is not None else (),
            seed=None if req.seed is None else req.seed + choice, logprobs=req.logprobs,
            prompt_logprobs=req.echo and req.logprobs is not None)

    def check_request(req: CompletionRequest) -> None:
        if req.model != options.model_name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server serves "
                           f"'{options.model_name}'", "not_found_error", param="model", code="model_not_found")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if req.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported", param="best_of")
        if req.seed is not None and not -(2 ** 63) <= req.seed < 2 ** 63 - options.max_n:
            raise APIError(400, "seed must fit in a signed 64-bit integer", param="seed")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_request(req)
        prompts = prompts_of(req)
        total = len(prompts) * req.n
        if total > options.max_n:
            raise APIError(400, f"n × prompts = {total} generations; this server allows at most "
                           f"{options.max_n} per request", param="n")
        worker: Worker = request.app.state.worker
        limit = options.max_batch + options.max_queue
        if worker.in_flight + total > limit:
            raise APIError(429, f"the server is busy ({worker.in_flight} generations running or queued, limit "
                           f"{limit}); retry later", "rate_limit_error", code="server_busy",
                           headers={"Retry-After": "1"})
        q: asyncio.Queue = asyncio.Queue()
        gens = []
        for i, ids in enumerate(prompts):
            for j in range(req.n):
                params = params_of(req, len(ids), j)
                gens.append(Generation(list(ids), params, tag=(q, i * req.n + j)))
        try:
            for g in gens:
                g.params.validate(model.config.vocab_size)
        except GenerationError as e:
            raise APIError(400, str(e)) from None
        worker.submit(gens)
        live = Live(gens, worker)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": options.model_name}
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            return StreamingResponse(stream_events(req, gens, q, head, prompt_tokens, live),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await wait_all(q, request, live)
        finally:
            live.abandon()
        if live.disconnected:
            return JSONResponse({}, status_code=499)  # nobody reads this
        choices = []
        for g in sorted(gens, key=lambda g: g.tag[1]):
            prefix = tokenizer.decode(g.prompt) if req.echo else ""
            text = prefix + g.text
            lp = None
            if req.logprobs is not None:
                entries = list(zip(g.prompt, g.prompt_logprobs or [None] * len(g.prompt))) if req.echo else []
                entries += [(x.token, x) for x in g.logprobs]
                lp = _logprobs_block(tokenizer, entries, 0, limit=len(text))
            choices.append({"text": text, "index": g.tag[1], "logprobs": lp, "finish_reason": g.finish_reason})
        return {**head, "choices": choices, "usage": usage(prompt_tokens, gens)}

    def usage(prompt_tokens: int, gens) -> dict:
        completion_tokens = sum(len(g.tokens) for g in gens)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    class Live:
        """A request's generations that the worker still counts as load. Touched on the loop thread only, so
        each generation leaves `worker.in_flight` exactly once: when its last event arrives or when the
        request gives up on it (client gone)."""

        def __init__(self, gens, worker: Worker) -> None:
            self.ids, self.worker, self.disconnected = {id(g): g for g in gens}, worker, False

        def __bool__(self) -> bool:
            return bool(self.ids)

        def done(self, g) -> None:
            if self.ids.pop(id(g), None) is not None:
                self.worker.in_flight -= 1

        def abandon(self) -> None:
            for g in list(self.ids.values()):
                g.cancel()  # the worker frees its row at its next step
                self.done(g)

    def unpack(item, live: Live):
        """A worker event, or the error it sent for a generation (raised as an APIError)."""
        if isinstance(item, tuple):  # (generation, exception)
            g, exc = item
            live.done(g)
            if isinstance(exc, GptkitError):
                raise APIError(400, str(exc))
            raise APIError(500, "internal server error", "server_error")
        if item.finished:
            live.done(item.generation)
        return item

    async def wait_all(q: asyncio.Queue, request: Request, live: Live) -> None:
        """Take a non-streamed request's events until its generations end, or until its client is gone. The
        client is looked at every CHECK_S seconds however fast events arrive (while a generation runs, they
        come every step, so waiting for a quiet moment would mean waiting for the end)."""
        loop = asyncio.get_running_loop()
        getter = None
        next_check = loop.time() + CHECK_S
        try:
            while live:
                if getter is None:
                    getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter}, timeout=max(0.0, next_check - loop.time()))
                if done:
                    item, getter = getter.result(), None
                    unpack(item, live)
                if live and loop.time() >= next_check:
                    if await request.is_disconnected():  # nobody waits for the answer any more
                        live.disconnected = True
                        return
                    next_check = loop.time() + CHECK_S
        finally:
            if getter is not None:
                getter.cancel()

    async def stream_events(req, gens, q, head, prompt_tokens, live: Live):
        offsets = {g.tag[1]: 0 for g in gens}
        echoed: set[int] = set()
        try:
            while live:
                try:
                    ev = unpack(await q.get(), live)
                except APIError as e:
                    yield sse(e.body())
                    return
                g = ev.generation
                i = g.tag[1]
                if req.echo and i not in echoed:  # the prompt first (scored by now, when logprobs are asked)
                    echoed.add(i)
                    text = tokenizer.decode(g.prompt)
                    lp = None
                    if req.logprobs is not None:
                        lp = _logprobs_block(tokenizer, list(zip(g.prompt, g.prompt_logprobs or
                                                                 [None] * len(g.prompt))), 0)
                    offsets[i] = len(text)
                    yield sse({**head, "choices": [{"text": text, "index": i, "logprobs": lp,
                                                    "finish_reason": None}]})
                if not ev.text and ev.logprob is None and not ev.finished:
                    continue
                lp = None
                if req.logprobs is not None and ev.logprob is not None:
                    lp = _logprobs_block(tokenizer, [(ev.logprob.token, ev.logprob)], offsets[i])
                offsets[i] += len(ev.text)
                yield sse({**head, "choices": [{"text": ev.text, "index": i, "logprobs": lp,
                                                "finish_reason": g.finish_reason if ev.finished else None}]})
            if (req.stream_options or {}).get("include_usage"):
                yield sse({**head, "choices": [], "usage": usage(prompt_tokens, gens)})
            yield "data: [DONE]\n\n"
        finally:  # also when the client goes away mid-stream: free the rows
            live.abandon()

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"

    return GuardMiddleware(app, options.api_key, options.max_body_bytes)


# --------------------------------------------------------------------------------------------- running it
class BackgroundServer:
    """uvicorn in a thread, for tests and benchmarks: `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app, host: str = DEFAULT_HOST, port: int = 0, **uvicorn_kw) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", **uvicorn_kw)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_model
    from .errors import CheckpointError

    _need_serve_extra()
    if not 0 <= args.port <= 65535:
        raise GptkitError(f"--port must be in 0..65535, got {args.port}")
    for name in ("max_batch", "max_queue", "max_body_bytes", "max_connections"):
        if getattr(args, name) < (0 if name == "max_queue" else 1):
            raise GptkitError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise GptkitError(f"--threads must be positive, got {args.threads}")
    args.log_level = args.log_level.lower()
    if args.log_level not in LOG_LEVELS:
        raise GptkitError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {args.log_level!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from .train import pick_device

    device = pick_device(args.device)
    model = load_model(args.ckpt, map_location=device)
    tokenizer = model.tokenizer
    if args.tokenizer:
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    if tokenizer is None:
        raise CheckpointError(f"{args.ckpt} has no tokenizer: pass --tokenizer DIR")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                              f"{model.config.vocab_size}")
    from .generate import prepare_for_inference

    model = prepare_for_inference(model, args.weights, args.blas)  # the server only decodes
    name = args.model_name or os.path.basename(os.path.normpath(args.ckpt))
    api_key = args.api_key if args.api_key is not None else os.environ.get("GPTKIT_API_KEY") or None
    opts = ServeOptions(model_name=name, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                        max_body_bytes=args.max_body_bytes)
    app = create_app(model, tokenizer, opts)
    import uvicorn

    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"gptkit: warning: serving on {args.host} without --api-key: anyone who can reach it may use it",
              file=sys.stderr)
    sock = bind_socket(args.host, args.port)  # bound before "serving ... on" is claimed
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"gptkit: serving {name!r} ({model.num_params / 1e6:.1f}M parameters, context "
          f"{model.config.block_size}) on http://{host}:{port}/v1", file=sys.stderr)
    config = uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level, lifespan="on",
                            limit_concurrency=args.max_connections, timeout_keep_alive=30)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def bind_socket(host: str, port: int):
    """A TCP socket bound to host:port (as uvicorn binds one), or a one-line GptkitError: a port in use, an
    address this machine does not have."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise GptkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GptkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP with an OpenAI-compatible completions API")
    p.add_argument("--ckpt", required=True, help="checkpoint, training run, or Hugging Face directory")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine "
                   "only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: "
                   "$GPTKIT_API_KEY, else no key)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the directory name)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory, when the checkpoint has none")
    p.add_argument("--max-batch", type=int, default=16, help="generations decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="generations waiting for a free row before 429")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--max-connections", type=int, default=256, help="open connections before 503")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--weights", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="fp16/int8: faster on CPU, slightly different output (see docs/benchmarks.md)")
    p.add_argument("--blas", choices=["numpy", "torch"], default="numpy",
                   help="fp32 on CPU: multiply through numpy's BLAS (OpenBLAS; default) or PyTorch's own (MKL)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    p.set_defaults(func=cmd_serve)
