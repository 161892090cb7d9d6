"""Running the app: uvicorn in a background thread (tests, benchmarks), and binding the listening socket."""

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
