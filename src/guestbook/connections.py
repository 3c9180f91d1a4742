"""What one frontend process holds, and for how long: the limits on connections that granian
enforces for the app, chosen so that an attacker who opens connections and then says nothing,
or says it slowly, can neither fill the process nor keep its probes from being answered.

- At most `connection_cap()` connections at once (16,384 where the file-descriptor limit
  allows). granian takes no new connection beyond that, probes included: the kernel queues
  them (up to `BACKLOG`) until an open one ends, which an idle one does within
  `HEADER_TIMEOUT`. So the cap sits far above what idle connections cost. Measured on one
  frontend (2 cores, loopback): an idle connection costs about 2.4 KB (10,000 of them: +24 MB,
  all taken, `/healthz` answered in about 1 ms beside them, all closed after 10 s); a request
  whose body is on its way about 22 KB (at most `bodies.MAX_READERS` of them); a live client
  about 28 KB, with no cap of its own but this one.
- A connection that has not sent a whole request head within `HEADER_TIMEOUT` seconds is
  closed: slow headers, a silent new connection and an idle keep-alive connection alike.
- A request head larger than `MAX_HEAD` bytes is answered 431 by granian: that buffer is what
  a slow-header connection can make this process hold.
- A peer that takes no bytes for `SEND_TIMEOUT` seconds while some wait for it (its window
  stays shut, or nothing is acknowledged) is dropped by the kernel (TCP_USER_TIMEOUT on the
  listening socket, which every accepted socket inherits). The live feed's own stalled-client
  cut only sees a send that blocks, and the kernel's buffers take megabytes before one does:
  without this, a live client that stopped reading stayed for good.

Bodies have their own deadline where they are read (`bodies.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
from pathlib import Path

from granian.http import HTTP1Settings

from .live import SEND_TIMEOUT

log = logging.getLogger("guestbook")

MAX_CONNECTIONS = 16_384
# Descriptors left for everything but client connections: store connections, the embedded
# store's pipes, log and data files.
FD_RESERVE = 1024
MIN_CONNECTIONS = 256
# Connections the kernel holds for us while the cap is reached (capped by net.core.somaxconn).
BACKLOG = 2048
HEADER_TIMEOUT = 10.0
# hyper's smallest allowed buffer is 8 KiB; 16 KiB of headers is what Node allows too.
MAX_HEAD = 16 * 1024

HTTP1 = HTTP1Settings(
    header_read_timeout=int(HEADER_TIMEOUT * 1000),
    keep_alive=True,
    max_buffer_size=MAX_HEAD,
)

# How long to look for granian's listening socket once the server starts.
_LISTENER_WAIT = 10.0
_LISTEN_STATE = "0A"


def connection_cap() -> int:
    """The most connections this process takes at once, after raising its soft limit on open
    files to the hard one (a container's soft limit is often far below it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft - FD_RESERVE))


async def cut_stalled_peers(port: int) -> None:
    """Set TCP_USER_TIMEOUT on this process's listening sockets on `port` once granian has
    opened them (it opens them itself, after `serve()` begins)."""
    if not _supported():
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _LISTENER_WAIT
    while loop.time() < deadline:
        found = _listening_fds(port)
        if found:
            for fd in found:
                _set_user_timeout(fd, SEND_TIMEOUT)
            return
        await asyncio.sleep(0.05)
    log.warning("no listening socket found on port %d: stalled peers are not cut", port)


def _supported() -> bool:
    """Linux: the option exists, and /proc lists sockets (reading it never blocks)."""
    return hasattr(socket, "TCP_USER_TIMEOUT") and Path("/proc/net/tcp").exists()


def _set_user_timeout(fd: int, seconds: float) -> None:
    # A duplicate descriptor of the same socket: the option is the socket's, not the fd's.
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))


def _listening_fds(port: int) -> list[int]:
    """This process's descriptors of TCP sockets listening on `port`."""
    inodes: set[str] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == _LISTEN_STATE and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    found: list[int] = []
    if not inodes:
        return found
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(entry)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.append(int(entry.name))
    return found
