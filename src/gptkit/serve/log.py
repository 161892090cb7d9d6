"""One log line per request: client, method, path, status, prompt and completion tokens, latency (to the last
byte of the answer, streams included). Plain ASGI around the whole app, so refusals made before FastAPI (401,
413) are logged too; the routes leave the request's generations in `request.state` (scope["state"]), which are
counted when the answer has been sent."""

import logging
import time

logger = logging.getLogger("gptkit.serve")


def tokens_of(state: dict) -> str:
    """" prompt=P completion=C" for a request that generated, else ""."""
    gens = state.get("gens")
    if gens is None:
        return ""
    return f" prompt={state.get('prompt_tokens', 0)} completion={sum(len(g.tokens) for g in gens)}"


class RequestLog:
    """Logs each HTTP request at INFO on the `gptkit.serve` logger once its answer is complete."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]

        async def send_and_watch(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            client = (scope.get("client") or ("-",))[0]
            logger.info('%s "%s %s" %s%s %.3fs', client, scope["method"], scope["path"], status[0] or "-",
                        tokens_of(scope.get("state") or {}), time.perf_counter() - t0)
