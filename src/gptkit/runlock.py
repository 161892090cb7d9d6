"""One writer per run directory: an exclusive OS file lock held for a command's whole life.

`gptkit train`, `finetune` and `quickstart` write a directory over minutes or hours (checkpoints, metrics, the
resolved config). Two of them on the same `--out` would interleave: one run's checkpoints beside the other's
metrics, both exiting 0. Each therefore takes `flock(LOCK_EX | LOCK_NB)` on `OUT/.gptkit.lock` before it reads
or writes anything there; a second writer is refused at once with one line naming the directory and the holder's
process id (written in the file). The kernel drops the lock when its holder exits in any way, `kill -9`
included, so a crashed run never blocks the next one: a stale file is just a file.

The file is removed on a normal release, while still locked (a writer that opened the old file before it was
removed notices the file it locked is no longer the one at the path, and tries again). A directory the lock
created and that nothing else was written into is removed with it, so a refused or failed command leaves no
trace. `--nproc` launches: the launcher holds the lock and names it in `GPTKIT_RUN_LOCK` for the processes it
starts, which do not take it again. This module imports no torch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import GptkitError

LOCK_NAME = ".gptkit.lock"
INHERITED = "GPTKIT_RUN_LOCK"
"""Environment variable naming a lock file that this process's launcher already holds for it."""


class RunLocked(GptkitError):
    """Another process is writing the same output directory."""


def lock_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / LOCK_NAME


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


class RunLock:
    """An exclusive lock on `directory` (created when missing); `release()` or the process's end frees it."""

    def __init__(self, directory: str | os.PathLike, what: str = "--out") -> None:
        self.directory = Path(directory)
        self.path = lock_path(directory)
        self.fd: int | None = None
        self.made_dir = not self.directory.exists()
        if self.directory.exists() and not self.directory.is_dir():
            raise GptkitError(f"{what} {self.directory} is a file; give a directory")
        self.directory.mkdir(parents=True, exist_ok=True)  # an OSError here is the CLI's one line with its reason
        self.fd = self._acquire()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def _acquire(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                who = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise RunLocked(f"{self.directory} is being written by {who} (another gptkit command on the "
                                f"same --out); wait for it to end or choose another directory") from None
            if self._is_current(fd):
                return fd
            os.close(fd)  # the holder removed the file as it released it: lock the new one

    def _is_current(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if self._is_current(self.fd):  # a published directory may have replaced ours (finetune)
                self.path.unlink(missing_ok=True)
            if self.made_dir:
                with contextlib.suppress(OSError):
                    self.directory.rmdir()  # only when empty: nothing was written
        finally:
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, held_by_launcher: bool = True) -> Iterator[RunLock | None]:
    """Hold the lock on `directory` for the block. When this process's launcher already holds it (it named the
    same file in GPTKIT_RUN_LOCK), yield None and take nothing."""
    inherited = os.environ.get(INHERITED)
    if held_by_launcher and inherited and Path(inherited).resolve() == lock_path(directory).resolve():
        yield None
        return
    with RunLock(directory) as lock:
        yield lock
