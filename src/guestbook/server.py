"""`guestbook serve`: the embedded store when none is configured, the web app on granian in
this process, and an orderly stop on SIGTERM or Ctrl-C.

Stopping goes: readiness turns 503 at once; after GUESTBOOK_SHUTDOWN_DRAIN seconds (time for a
load balancer to stop sending) the listener closes, requests in flight finish and the lifespan
closes the store clients; last, the embedded store (if any) flushes its file and exits.

The embedded store is supervised meanwhile: restarted when it dies, and when it cannot be,
`serve` stops the same way and ends with `StoreLost` (a non-zero exit), so that whatever runs
`serve` can act.

With GUESTBOOK_WORKERS above 1 this process runs no app itself: it starts that many worker
processes, each running `serve_worker`, and supervises them and the store (see workers.py).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import replace

from granian.constants import HTTPModes, Interfaces
from granian.server.embed import Server

from . import connections
from .app import create_app
from .embedded import EmbeddedServer, StoreLost, stop_supervising
from .logs import BufferedStdoutHandler, configure_logging
from .settings import Settings, StoreAddress, discover

log = logging.getLogger("guestbook")

# Container objects allocated between two young collections of the cyclic garbage collector
# (Python's default is 700). A fan-out to 10,000 live clients allocates about three per
# client; at 700 the collector ran dozens of times per message and promoted every client's
# waiting future, so full collections walked all clients every few messages: a third of the
# fan-out's time. Objects freed by reference counting, nearly all of them, never wait for it.
GC_YOUNG = 50_000


class AddressInUse(RuntimeError):
    """GUESTBOOK_HOST:GUESTBOOK_PORT cannot be listened on: another process listens there, or
    the host is not an address of this machine."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host = host
        self.port = port
        self.in_use = error.errno == errno.EADDRINUSE
        self.reason = error.strerror or str(error)
        super().__init__(self.describe())

    def describe(self, name: Callable[[str], str] = str) -> str:
        """The error line; `name` says how to call a variable (the CLI names its flag)."""
        if self.in_use:
            hint = (
                f"another program listens there; choose another port with {name('GUESTBOOK_PORT')}"
            )
        else:
            hint = f"check {name('GUESTBOOK_HOST')}"
        return f"cannot listen on {self.host}:{self.port}: {self.reason}; {hint}"


def check_address_free(host: str, port: int) -> None:
    """Fail clearly if something listens there already.

    granian binds with SO_REUSEPORT, so a second guestbook on the same port would otherwise
    start "successfully" and silently share the traffic. SO_REUSEADDR alone still binds over
    connections lingering in TIME_WAIT, but not over a listener.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AddressInUse(host, port, exc) from None


def serve(settings: Settings, instance: str) -> None:
    check_address_free(settings.host, settings.port)
    log_handler = configure_logging(settings, instance)
    address = discover(settings)
    embedded: EmbeddedServer | None = None
    if address.mode == "embedded":
        embedded = EmbeddedServer.start(settings.data_dir)
        address = replace(address, leader_url=embedded.url)
        log.info("embedded store started in %s", settings.data_dir)
    try:
        if settings.workers > 1:
            from .workers import run_workers

            run_workers(settings, address, instance, log_handler, embedded)
        else:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(_run(settings, address, instance, log_handler, embedded))
    finally:
        if embedded is not None:
            embedded.stop()
            log.info("embedded store stopped")


def serve_worker(settings: Settings, address: StoreAddress, instance: str) -> None:
    """One of GUESTBOOK_WORKERS' processes: the app on the port its parent checked, on the
    store its parent found (and supervises, when embedded)."""
    log_handler = configure_logging(settings, instance)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_run(settings, address, instance, log_handler))


def settle_gc() -> None:
    """Once the app is built: what start-up made (modules, the app, its routes) is never
    garbage, so the collector stops walking it, and young collections come less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ModuleNotFoundError:
        return None
    return uvloop.new_event_loop


async def _run(
    settings: Settings,
    address: StoreAddress,
    instance: str,
    log_handler: BufferedStdoutHandler,
    embedded: EmbeddedServer | None = None,
) -> None:
    app = create_app(settings, address, instance)
    server = Server(
        app,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        # HTTP/1.1 only, no WebSockets: neither is used, and each costs memory per connection
        # (about 12 KB less per live client without them).
        http=HTTPModes.http1,
        websockets=False,
        # What one frontend holds and for how long: see connections.py.
        backlog=connections.BACKLOG,
        backpressure=connections.connection_cap(),
        http1_settings=connections.HTTP1,
        log_enabled=False,
    )
    cutter = asyncio.create_task(
        connections.cut_stalled_peers(settings.port), name="guestbook-listener-options"
    )
    loop = asyncio.get_running_loop()
    stopping = False

    def begin_stop(drain: float) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        state = getattr(app.state, "guestbook", None)
        if state is not None:
            state.shutting_down.set()
        loop.call_later(drain, server.stop)

    def on_signal(signum: int) -> None:
        if not stopping:
            log.info("received %s: stopping", signal.Signals(signum).name)
        begin_stop(settings.shutdown_drain)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    lost: list[BaseException] = []
    supervisor: asyncio.Task[None] | None = None
    if embedded is not None:
        supervisor = asyncio.create_task(embedded.supervise(), name="guestbook-embedded-store")

        def on_supervisor_end(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            if error is None:
                return
            lost.append(error)
            log.error("%s; stopping", error, exc_info=not isinstance(error, StoreLost))
            # No drain: with the store gone there is nothing to finish serving.
            begin_stop(0.0)

        supervisor.add_done_callback(on_supervisor_end)

    def flush_logs() -> None:
        log_handler.flush_due()
        loop.call_later(log_handler.FLUSH_EVERY, flush_logs)

    flush_logs()
    settle_gc()
    log.info("listening on http://%s:%d", settings.host, settings.port)
    try:
        await server.serve()
    finally:
        cutter.cancel()
        await stop_supervising(supervisor)
    log.info("stopped")
    log_handler.flush()
    if lost:
        raise lost[0]
