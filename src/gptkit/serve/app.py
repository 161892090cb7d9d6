"""`create_app`: the FastAPI application, wired from the pieces of this package.

    GET  /                    the playground page (playground.html; --no-ui turns it off)
    GET  /docs, /openapi.json the API reference and its schema (--no-docs turns them off)
    GET  /health              liveness and load (no key needed)
    GET  /v1/models           the one model served
    POST /v1/completions      see schemas.CompletionRequest
    POST /v1/chat/completions see schemas.ChatCompletionRequest (messages through the chat template)

Each POST route checks the request (translate), submits its generations to the worker (with back-pressure:
429 beyond max_batch + max_queue), and either streams chunks (sse) or waits and assembles the answer
(responses). Errors of every kind leave in OpenAI's shape (errors), key and body size are checked before
FastAPI sees the request (guard).

No `from __future__ import annotations`: FastAPI reads the annotations of the route functions.
"""

import asyncio
import contextlib
from dataclasses import dataclass
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from .. import __version__
from ..chat_template import ChatTemplate
from ..generate import Engine, Generation, GenerationError
from . import responses, sse, translate
from .config import ServeOptions
from .errors import APIError, install_handlers
from .guard import GuardMiddleware
from .log import RequestLog
from .schemas import ERRORS, ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from .translate import Served
from .worker import Live, Worker, wait_all

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class Submitted:
    """A request's generations, handed to the worker: their events arrive on `q`."""

    gens: list[Generation]
    q: asyncio.Queue
    live: Live
    prompt_tokens: int


def submit(request: Request, served: Served, prompts: list[list[int]], n: int, params_of) -> Submitted:
    """Make n generations per prompt (`params_of(prompt_len, choice)` gives each its SamplingParams), check the
    server's limits (at most max_n per request; 429 when the queue is full), and hand them to the worker."""
    options = served.options
    total = len(prompts) * n
    limit = options.max_batch + options.max_queue
    most = min(options.max_n, limit)  # more could never run, however long the client waits: 400, not 429
    if total > most:
        raise APIError(400, f"n × prompts = {total} generations; this server allows at most {most} per request",
                       param="n")
    worker: Worker = request.app.state.worker
    if worker.in_flight + total > limit:
        raise APIError(429, f"the server is busy ({worker.in_flight} generations running or queued, limit "
                       f"{limit}); retry later", "rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
    q: asyncio.Queue = asyncio.Queue()
    gens = [Generation(list(ids), params_of(len(ids), i * n + j), tag=(q, i * n + j))
            for i, ids in enumerate(prompts) for j in range(n)]
    try:
        for g in gens:
            g.params.validate(served.vocab_size)
    except GenerationError as e:
        raise APIError(400, str(e)) from None
    worker.submit(gens)
    job = Submitted(gens, q, Live(gens, worker), sum(len(p) for p in prompts))
    request.state.gens, request.state.prompt_tokens = gens, job.prompt_tokens  # for the request log
    return job


async def finish(request: Request, job: Submitted) -> bool:
    """Wait for a non-streamed request's generations; False when its client went away meanwhile."""
    try:
        await wait_all(job.q, request.is_disconnected, job.live)
    finally:
        job.live.abandon()
    return not job.live.disconnected


def streaming(chunks) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=STREAM_HEADERS)


GONE = 499  # nginx's "client closed request": nobody reads this answer


def add_pages(app: FastAPI, options: ServeOptions) -> None:
    """The playground (GET /) and the API reference (GET /docs): static pages shipped with the package."""
    pages = [("/", "playground.html")] if options.ui else []
    pages += [("/docs", "docs.html")] if options.docs else []
    for path, name in pages:
        app.add_api_route(path, static_page(files(__package__).joinpath(name).read_text(encoding="utf-8")),
                          methods=["GET"], include_in_schema=False)


def static_page(html: str):
    """An endpoint that answers `html`. It takes no parameters: FastAPI would read any (a lambda's default
    included) from the query string, and `/?html=<script>...` would have served the caller's page."""
    def page() -> HTMLResponse:
        return HTMLResponse(html)
    return page


def true_schema(app: FastAPI) -> None:
    """/openapi.json without FastAPI's automatic 422 answers: invalid requests get 400 here, as from OpenAI."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)
            for ops in spec["paths"].values():
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    app.openapi = openapi


def add_routes(app: FastAPI, served: Served) -> None:
    options, tokenizer = served.options, served.tokenizer

    @app.get("/health")
    async def health(request: Request):
        """Liveness and load: generations running, waiting, in flight; totals since the start."""
        w: Worker = request.app.state.worker
        return {"status": "ok", "model": options.model_name, "running": len(w.engine.rows),
                "waiting": len(w.engine.waiting), "in_flight": w.in_flight, **w.stats}

    @app.get("/v1/models")
    async def models():
        """The one model this server serves (its id is what requests send as `model`)."""
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": 0,
                                            "owned_by": "gptkit", "max_model_len": served.block_size}]}

    @app.post("/v1/completions", response_model=None, responses={200: {"model": Completion}, **ERRORS})
    async def completions(req: CompletionRequest, request: Request):
        """Continue each prompt (OpenAI's legacy completions API; lm-eval's `local-completions` uses it)."""
        translate.check_completion(req, served)
        prompts = translate.prompts_of(req, served)
        job = submit(request, served, prompts, req.n,
                     lambda length, choice: translate.completion_params(req, served, length, choice))
        top = responses.head("text_completion", options.model_name)
        logprobs = req.logprobs is not None
        if req.stream:
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return streaming(sse.completion_stream(tokenizer, job.q, job.live, job.gens, top, echo=req.echo,
                                                   logprobs=logprobs, include_usage=include_usage,
                                                   prompt_tokens=job.prompt_tokens))
        if not await finish(request, job):
            return JSONResponse({}, status_code=GONE)
        return responses.completion(top, job.gens, tokenizer, req.echo, logprobs, job.prompt_tokens)

    @app.post("/v1/chat/completions", response_model=None, responses={200: {"model": ChatCompletion}, **ERRORS})
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        """Answer a conversation: the messages are rendered through the chat template into one prompt."""
        translate.check_chat(req, served)
        prompt = translate.chat_prompt(req, served)
        job = submit(request, served, [prompt], req.n,
                     lambda length, choice: translate.chat_params(req, served, length, choice))
        if req.stream:
            top = responses.head("chat.completion.chunk", options.model_name)
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return streaming(sse.chat_stream(tokenizer, job.q, job.live, job.gens, top, logprobs=req.logprobs,
                                             include_usage=include_usage, prompt_tokens=job.prompt_tokens))
        if not await finish(request, job):
            return JSONResponse({}, status_code=GONE)
        top = responses.head("chat.completion", options.model_name)
        return responses.chat_completion(top, job.gens, tokenizer, req.logprobs, job.prompt_tokens)


def create_app(model, tokenizer, options: ServeOptions):
    """The ASGI application serving `model` (a GPT, put in eval mode; `gptkit serve` first readies it with
    `prepare_for_inference`) with `tokenizer`: FastAPI behind GuardMiddleware behind RequestLog. Start it with
    uvicorn; its worker thread (`.state.worker`) starts and stops with the app (lifespan)."""

    model.eval()
    block = model.config.block_size
    served = Served(tokenizer, block, model.config.vocab_size, options, ChatTemplate.of(tokenizer))

    def make_engine() -> Engine:
        return Engine(model, tokenizer, max_batch=options.max_batch,
                      max_prefill_tokens=max(options.max_prefill_tokens, block))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.worker = Worker(make_engine, asyncio.get_running_loop())
        app.state.worker.start()
        try:
            yield
        finally:
            app.state.worker.stop()

    app = FastAPI(title="gptkit", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if options.docs else None)
    install_handlers(app)
    add_routes(app, served)
    add_pages(app, options)
    true_schema(app)
    asgi = RequestLog(GuardMiddleware(app, options.api_key, options.max_body_bytes))
    asgi.state = app.state  # the FastAPI app's state (its `worker`, once started), for tests and tools
    return asgi


__all__ = ["create_app"]
