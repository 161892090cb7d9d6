"""The thread that owns the model, and what a request does with the events it sends back.

One worker thread owns the Engine (continuous batching): concurrent requests are decoded together, one batched
forward per token, so throughput grows with load. Request handlers run on the asyncio loop; they submit
generations, and the worker sends each event back to the loop, to the queue of the request that owns the
generation. `Live` counts a request's generations as load until each ends or is given up (client gone).
"""

import asyncio
import queue
import threading
import traceback
from collections.abc import Awaitable, Callable

import torch

from ..errors import GptkitError
from .config import CHECK_S
from .errors import APIError, internal


class Worker:
    """The thread that owns the Engine. Handlers `submit` generations; each event goes back to the asyncio
    loop, to the queue of the request that owns the generation (`generation.tag = (queue, choice index)`)."""

    def __init__(self, make_engine, loop: asyncio.AbstractEventLoop) -> None:
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
                for g in self.engine.unfinished():
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


class Live:
    """A request's generations that the worker still counts as load. Touched on the loop thread only, so each
    generation leaves `worker.in_flight` exactly once: when its last event arrives or when the request gives up
    on it (client gone)."""

    def __init__(self, gens: list, worker: Worker) -> None:
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
    """A worker event, or the error the worker sent for a generation, raised as an APIError (400 for a
    GptkitError, such as a bad request the checks missed; 500 without details for anything else)."""
    if isinstance(item, tuple):  # (generation, exception)
        g, exc = item
        live.done(g)
        if isinstance(exc, GptkitError):
            raise APIError(400, str(exc))
        raise internal()
    if item.finished:
        live.done(item.generation)
    return item


async def wait_all(q: asyncio.Queue, is_disconnected: Callable[[], Awaitable[bool]], live: Live) -> None:
    """Take a non-streamed request's events until its generations end, or until its client is gone. The client
    is looked at every CHECK_S seconds however fast events arrive (while a generation runs they come every
    step, so waiting for a quiet moment would mean waiting for the end)."""
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
                if await is_disconnected():  # nobody waits for the answer any more
                    live.disconnected = True
                    return
                next_check = loop.time() + CHECK_S
    finally:
        if getter is not None:
            getter.cancel()
