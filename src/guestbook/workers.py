"""`GUESTBOOK_WORKERS=N`: N frontend processes sharing one port, for a machine with more cores
than one event loop can use.

`guestbook serve` (the parent) checks the port, finds or starts the store — the embedded one
once, shared by every worker over its socket — and starts N workers, `python -m
guestbook.workers`, each handed its settings on stdin (never in its arguments or environment,
which other users of the machine can read). Each worker is a whole frontend of its own: its app,
store clients, feed reader and live clients. They all bind the port (granian sets SO_REUSEPORT)
and the kernel spreads new connections across them. Worker n is named `<instance>-<n>` in
/api/status, logs and metrics, and shows as a frontend of its own on the status page: each has
its own memory and feed, and is told apart when one misbehaves.

The workers' output comes through the parent, which writes it in whole lines: several
processes writing to one pipe could split each other's lines.

Stopping: SIGTERM or SIGINT to the parent is passed to every worker, which stops as a single
server does (readiness 503, the drain, requests in flight finish); the parent waits for them
(SIGKILL after the drain and STOP_GRACE more), then stops the embedded store.

A worker that dies while nobody asked it to stop is started again at once: the others keep
serving meanwhile, so a crash (the kernel's OOM killer, say) costs the connections it held, not
the frontend. One that dies more than MAX_RESTARTS times in RESTART_WINDOW seconds is not: the
parent stops the others and exits with status 1, as it does when the embedded store is lost,
so that whatever runs `serve` can act. A worker is sent SIGTERM when the parent dies
(PR_SET_PDEATHSIG), so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import subprocess
import sys
import time
from collections import deque

from .embedded import EmbeddedServer, StoreLost, _die_with_parent_hook, stop_supervising
from .logs import BufferedStdoutHandler
from .settings import Settings, StoreAddress

log = logging.getLogger("guestbook")

# Deaths of one worker tolerated within the window before the parent gives up.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# How long a worker may take to stop beyond the drain before it is killed.
STOP_GRACE = 30.0
# How often the parent looks at its children and flushes its log.
WATCH_EVERY = 0.1


def worker_name(instance: str, index: int) -> str:
    return f"{instance}-{index}"


class Worker:
    """One worker process, started again when it dies."""

    def __init__(self, index: int, handoff: bytes) -> None:
        self.index = index
        self._handoff = handoff
        self.process: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None
        self.deaths: deque[float] = deque()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guestbook.workers",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent_hook(),
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(self._handoff)
        self.process.stdin.close()
        self._relay = asyncio.create_task(_relay_lines(self.process.stdout))

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        if self._relay is not None:
            await self._relay  # the rest of its output
        return code

    def died_too_often(self, now: float) -> bool:
        """Note a death; True when it is one too many for the window."""
        while self.deaths and now - self.deaths[0] > RESTART_WINDOW:
            self.deaths.popleft()
        self.deaths.append(now)
        return len(self.deaths) > MAX_RESTARTS


async def _relay_lines(stream: asyncio.StreamReader) -> None:
    """Copy a worker's output to ours in whole lines (a last unterminated one at its end)."""
    rest = b""
    while chunk := await stream.read(65536):
        whole, newline, rest = (rest + chunk).rpartition(b"\n")
        if newline:
            _write(whole + newline)
    if rest:
        _write(rest + b"\n")


def _write(data: bytes) -> None:
    sys.stdout.flush()  # our own lines first, whole
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def run_workers(
    settings: Settings,
    address: StoreAddress,
    instance: str,
    log_handler: BufferedStdoutHandler,
    embedded: EmbeddedServer | None,
) -> None:
    """Run `settings.workers` workers until a signal stops them; SystemExit(1) when one keeps
    dying or the embedded store is lost."""
    asyncio.run(_supervise(settings, address, instance, log_handler, embedded))


async def _supervise(
    settings: Settings,
    address: StoreAddress,
    instance: str,
    log_handler: BufferedStdoutHandler,
    embedded: EmbeddedServer | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failure: list[str] = []

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            log.info("received %s: stopping the workers", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    supervisor: asyncio.Task[None] | None = None
    if embedded is not None:
        supervisor = asyncio.create_task(embedded.supervise(), name="guestbook-embedded-store")

        def on_store_end(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            error = task.exception()
            failure.append(str(error))
            log.error("%s; stopping", error, exc_info=not isinstance(error, StoreLost))
            stop.set()

        supervisor.add_done_callback(on_store_end)

    workers = [
        Worker(n, pickle.dumps((settings, address, worker_name(instance, n))))
        for n in range(1, settings.workers + 1)
    ]
    try:
        for worker in workers:
            await worker.start()
        log.info("%d workers on http://%s:%d", len(workers), settings.host, settings.port)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_EVERY)
            log_handler.flush_due()
            for worker in workers:
                if stop.is_set() or worker.alive:
                    continue
                code = await worker.wait()
                if worker.died_too_often(time.monotonic()):
                    failure.append(
                        f"worker {worker.index} died {len(worker.deaths)} times within "
                        f"{RESTART_WINDOW:.0f} s (exit status {code} last); not restarting it"
                    )
                    log.error("%s; stopping", failure[-1])
                    stop.set()
                    break
                log.warning("worker %d died (exit status %d); restarting it", worker.index, code)
                await worker.start()
    finally:
        await _stop_all(workers, settings.shutdown_drain + STOP_GRACE)
        await stop_supervising(supervisor)
        log.info("stopped")
        log_handler.flush()
    if failure:
        raise SystemExit(1)


async def _stop_all(workers: list[Worker], patience: float) -> None:
    started = [w for w in workers if w.process is not None]
    for worker in started:
        worker.signal(signal.SIGTERM)
    waits = [asyncio.ensure_future(w.wait()) for w in started]
    if not waits:
        return
    _, late = await asyncio.wait(waits, timeout=patience)
    if late:
        log.warning("%d workers did not stop in time; killing them", len(late))
        for worker in started:
            worker.signal(signal.SIGKILL)
        await asyncio.wait(late)


def main() -> None:
    """A worker: the settings, store address and name its parent sends on stdin, then the
    app until SIGTERM."""
    from .server import serve_worker

    # Only the parent holds the other end of this pipe: what comes through it is its own.
    settings, address, name = pickle.load(sys.stdin.buffer)  # noqa: S301
    serve_worker(settings, address, name)


if __name__ == "__main__":
    main()
