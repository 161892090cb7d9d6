"""Running the app: uvicorn in a background thread (tests, benchmarks), binding the listening socket, the
request log's output, a chat template from a file."""

import logging
import sys
import threading
import time

from ..errors import GptkitError
from .config import DEFAULT_HOST


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


def log_requests(level: str) -> str:
    """Send the request log (gptkit.serve, one line per request at info) to stderr at `level` (uvicorn's names);
    return the level for uvicorn's own loggers: warning, unless debug or trace is asked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("gptkit.serve")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if level == "trace" else level.upper())
    return level if level in ("debug", "trace") else "warning"


def read_chat_template_file(path: str) -> str:
    """The text of a chat template file, checked to be valid Jinja, or a one-line GptkitError."""
    from ..chat_template import ChatTemplate

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise GptkitError(f"cannot read the chat template {path}: {getattr(e, 'strerror', None) or e}") from None
    ChatTemplate(text).check()
    return text
