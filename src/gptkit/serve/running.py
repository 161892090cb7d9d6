"""Running the app: uvicorn in a background thread (tests, benchmarks), binding the listening socket, the
request log's output, a chat template from a file."""

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

from ..chat_template import ChatTemplate
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


@contextlib.contextmanager
def log_requests(level: str) -> Iterator[str]:
    """While the server runs, send the request log (gptkit.serve, one line per request at info) to stderr at
    `level` (uvicorn's names); yields the level for uvicorn's own loggers: warning, unless debug or trace."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("gptkit.serve")
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG if level == "trace" else level.upper())
    try:
        yield level if level in ("debug", "trace") else "warning"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def read_chat_template_file(path: str) -> str:
    """The text of a chat template file, checked to be valid Jinja, or a one-line GptkitError."""

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise GptkitError(f"cannot read the chat template {path}: {getattr(e, 'strerror', None) or e}") from None
    ChatTemplate(text).check()
    return text

