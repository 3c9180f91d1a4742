"""Whether the client of a request is still connected, asked of the kernel.

granian tells the app the same thing, `http.disconnect`, when the client went away in the middle
of its body and when the body it is still sending cannot be parsed (a chunk size that is not
hex, a chunk without its CRLF): the app would answer 499 to a client that waits for an answer.
The kernel knows the difference. A client that left has sent FIN (its connection is in
CLOSE_WAIT here) or RST (the connection is gone); one whose body was malformed has done neither
and its connection is still ESTABLISHED. One sock_diag request (the netlink interface `ss` uses)
looks that one connection up by its addresses, in microseconds, however many are open.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from typing import Any

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_ESTABLISHED = 1


def _address(host: str) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, socket.inet_pton(family, host).ljust(16, b"\0")


def tcp_state(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The kernel's state (`TCP_ESTABLISHED` = 1, ...) of this host's TCP connection from
    `local` to `remote`, or None when it cannot be asked. With no such connection the kernel
    answers with the socket listening on `local` (LISTEN) or not at all."""
    family, source = _address(local[0])
    _, destination = _address(remote[0])
    sockid = (
        struct.pack("!HH", local[1], remote[1])
        + source
        + destination
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)  # any interface, no cookie to match
    )
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
    header = _HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as link:
            link.settimeout(1.0)
            link.sendto(header + request, (0, 0))
            answer = link.recv(65536)
    except (OSError, AttributeError):  # no netlink (not Linux), or sock_diag not available
        return None
    if len(answer) < _HEADER.size + 2:
        return None
    _, kind = struct.unpack_from("=IH", answer)
    if kind == _NLMSG_ERROR:
        return None
    _, state = struct.unpack_from("=BB", answer, _HEADER.size)
    return int(state)


def still_connected(scope: Mapping[str, Any]) -> bool:
    """Whether the request's client has neither closed nor reset its connection. False when
    that cannot be told (no addresses, no sock_diag): a client that left is the old reading."""
    client, server = scope.get("client"), scope.get("server")
    if not client or not server:
        return False
    try:
        # granian gives the ports as strings.
        local, remote = (str(server[0]), int(server[1])), (str(client[0]), int(client[1]))
    except (TypeError, ValueError, IndexError):
        return False
    try:
        return tcp_state(local, remote) == _ESTABLISHED
    except (OSError, ValueError, struct.error):
        return False
