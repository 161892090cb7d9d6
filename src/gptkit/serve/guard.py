"""API key and body size, checked in plain ASGI before a request reaches FastAPI, so an unauthenticated or
oversized request is never parsed: missing or wrong key when --api-key is set → 401 (only /v1/*: the page and
/health need no key), body over --max-body-bytes → 413 (also for chunked uploads, measured as they arrive)."""

import hmac

from .errors import APIError, json_bytes


async def send_error(send, err: APIError) -> None:
    """Answer an error from plain ASGI (before FastAPI sees the request)."""
    body = json_bytes(err.body())
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
                return await send_error(send, APIError(401, why, "invalid_request_error", code="invalid_api_key"))
        too_big = APIError(413, f"request body is larger than the limit of {self.max_body} bytes",
                           "invalid_request_error", code="request_too_large")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await send_error(send, APIError(400, "invalid Content-Length header"))
            if declared > self.max_body:
                await self._drain(receive, limit=16 * self.max_body)  # so the client reads our answer
                return await send_error(send, too_big)
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
                return await send_error(send, too_big)
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
