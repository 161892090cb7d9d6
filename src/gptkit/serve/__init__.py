"""`gptkit serve`: an OpenAI-compatible server (FastAPI + uvicorn) over the generation Engine.

The package, leaf to root (each piece is testable without HTTP):

    config      ServeOptions, default host and port (light: the CLI builds it)
    errors      APIError in OpenAI's shape, and the handlers that answer every failure in it
    guard       API key and body size, in plain ASGI before FastAPI parses anything
    schemas     request models (validated by FastAPI) and response models (for /openapi.json)
    translate   request → prompts as token ids + one SamplingParams per choice
    worker      the thread that owns the Engine; a request's live generations; waiting for them
    responses   finished generations → answer bodies (text, logprobs, usage)
    sse         token events → streamed chunks (server-sent events)
    app         create_app: wires the above into routes
    running     BackgroundServer (uvicorn in a thread), bind_socket
    cli         `gptkit serve`'s work: load the model, run uvicorn (its flags: gptkit.options.serve)

Importing this package is light (no fastapi, pydantic or torch): `create_app`, `BackgroundServer` and
`APIError` are loaded on first use.
"""

from importlib import import_module

from .config import DEFAULT_HOST, DEFAULT_PORT, ServeOptions

_LAZY = {"create_app": "app", "BackgroundServer": "running", "bind_socket": "running", "APIError": "errors"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "APIError", "BackgroundServer", "ServeOptions", "bind_socket", "create_app"]
