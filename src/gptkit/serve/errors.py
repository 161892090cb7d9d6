"""OpenAI's error shape, {"error": {"message", "type", "param", "code"}}, and the FastAPI handlers that answer
every failure in it: APIError (raised by the server's own checks), request validation (400), routing (404/405)
and bugs (500, without details)."""

import json
import traceback
from typing import Any

from starlette.exceptions import HTTPException


class APIError(Exception):
    """An error answered to the client in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


UNION_FIELDS = {"prompt": "text, a list of texts, a list of token ids (integers) or a list of such lists",
                "stop": "a string or a list of strings", "content": "a string, a list of text parts or null"}
"""What each field that takes several shapes may be: pydantic reports a mismatch against its first shape only
("prompt.str: Input should be a valid string", for token ids that are not integers)."""


def _is_shape_tag(part: Any) -> bool:
    """A part of pydantic's error location that names a union member ('str', 'list[int]'), not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part
                                      or part.startswith(("function-", "constrained-", "lax-", "strict-")))


def from_validation(errors: list[dict]) -> APIError:
    """The 400 for pydantic's validation errors: the first one, naming the field (`param`) it is about."""
    first = errors[0] if errors else {}
    raw = [x for x in first.get("loc", ()) if x != "body"]
    loc = [str(x) for x in raw if not _is_shape_tag(x)]
    param = loc[0] if loc else None
    where = ".".join(loc)
    msg = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        msg, param, where = "the request body is not valid JSON", None, ""
    elif first.get("type") == "missing" and not loc:
        msg = "the request body is missing (expected a JSON object)"
    elif not loc and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        msg = "the request body must be a JSON object, sent with Content-Type: application/json"
    elif len(loc) < len(raw) and loc and loc[-1] in UNION_FIELDS:
        msg = f"must be {UNION_FIELDS[loc[-1]]}"
    return APIError(400, f"{where}: {msg}" if where else msg, param=param)


def from_http(status: int, detail: Any) -> APIError:
    """Starlette's own errors (unknown route 404, wrong method 405) in OpenAI's shape."""
    return APIError(status, str(detail), "not_found_error" if status == 404 else "invalid_request_error")


def internal() -> APIError:
    """The 500 for a bug: no details (they are printed on the server's stderr)."""
    return APIError(500, "internal server error", "server_error")


def install_handlers(app) -> None:
    """Answer every error of `app` (a FastAPI) in OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    def answer(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    async def api_error(request, exc: APIError):
        return answer(exc)

    async def validation_error(request, exc: RequestValidationError):
        return answer(from_validation(list(exc.errors())))

    async def http_error(request, exc: HTTPException):
        return answer(from_http(exc.status_code, exc.detail))

    async def internal_error(request, exc: Exception):  # a bug: say so without details
        traceback.print_exception(exc)
        return answer(internal())

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
