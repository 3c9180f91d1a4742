"""A request body that cannot be read, over raw sockets to a real `guestbook serve`: a client
still waiting whose chunked body is malformed gets 400 problem+json; a client that left in the
middle of its body is counted 499 and logged at info, never a 500. granian reports both to the
app as the same `http.disconnect`; the kernel's view of the connection tells them apart
(`peers.py`)."""

from __future__ import annotations

import json
import socket
import struct
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import HOST, Frontend, wait_until
from guestbook.peers import still_connected

HEAD = (
    "POST /api/messages HTTP/1.1\r\nHost: guestbook.test\r\n"
    "Content-Type: application/json\r\nAccept: application/json\r\n"
)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def body_of(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while part := sock.recv(65536):
        data += part
    return data


def split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def answered(status: int, frontend: Frontend) -> float:
    """How many POSTs this frontend has answered with `status`, under any route label (a
    client that left is counted before the fast path names the route)."""
    text = httpx.get(f"{frontend.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "guestbook_http_requests":
            return sum(
                sample.value
                for sample in family.samples
                if sample.name.endswith("_total")
                and sample.labels["method"] == "POST"
                and sample.labels["status"] == str(status)
            )
    return 0.0


def texts(frontend: Frontend) -> list[str]:
    response = httpx.get(f"{frontend.url}/api/messages", params={"limit": 100}, timeout=10)
    return [m["text"] for m in response.json()["messages"]]


@pytest.fixture
def marker() -> str:
    return f"body {uuid.uuid4().hex[:8]}"


MALFORMED = {
    # The size line of the first chunk is not hexadecimal.
    "a chunk size that is not hex": lambda body: b"zz\r\n" + body + b"\r\n0\r\n\r\n",
    # A good chunk, then a size line that is not hexadecimal.
    "a bad size after a good chunk": lambda body: chunk(body) + b"not-a-size\r\n",
    # The chunk's data runs on where its CRLF must be.
    "a chunk without its CRLF": lambda body: f"{len(body):x}\r\n".encode() + body + b"XX0\r\n\r\n",
}


@pytest.mark.parametrize("malformed", list(MALFORMED), ids=list(MALFORMED))
def test_a_malformed_chunked_body_is_answered_400_problem_json_to_the_waiting_client(
    shared_frontend: Frontend, marker: str, malformed: str
) -> None:
    before = answered(499, shared_frontend), answered(500, shared_frontend)
    request = HEAD + "Transfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection((HOST, shared_frontend.port), timeout=10) as sock:
        sock.sendall(request.encode() + MALFORMED[malformed](body_of(marker)))
        status, headers, body = split(answer(sock))

    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-content-type-options"] == "nosniff"
    problem = json.loads(body)
    assert problem["status"] == 400
    assert "malformed" in problem["detail"]
    assert marker not in texts(shared_frontend)
    assert (answered(499, shared_frontend), answered(500, shared_frontend)) == before


LEFT = {
    "a Content-Length body cut short": (b"Content-Length: 200\r\n", lambda body: body[:9]),
    "a chunked body cut inside a chunk": (
        b"Transfer-Encoding: chunked\r\n",
        lambda body: f"{len(body):x}\r\n".encode() + body[:9],
    ),
}
# granian's server sends `100 Continue` once the app starts reading the body: the client leaves
# after that, so a request was really made of it (a close that comes with the head may be
# dropped before any).
CONTINUE = b"Expect: 100-continue\r\n\r\n"


@pytest.mark.parametrize("how", list(LEFT), ids=list(LEFT))
def test_a_client_that_leaves_mid_body_is_counted_499_and_logged_at_info_not_as_an_error(
    shared_frontend: Frontend, marker: str, how: str
) -> None:
    left, errors = answered(499, shared_frontend), answered(500, shared_frontend)
    framing, cut = LEFT[how]
    with socket.create_connection((HOST, shared_frontend.port), timeout=10) as sock:
        sock.sendall(HEAD.encode() + framing + CONTINUE)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(cut(body_of(marker)))

    wait_until(lambda: answered(499, shared_frontend) == left + 1, timeout=20)
    assert answered(500, shared_frontend) == errors
    lines = [json.loads(line) for line in shared_frontend.logs().splitlines() if "{" in line]
    gone = [line for line in lines if line.get("event") == "client left during POST /api/messages"]
    assert gone, shared_frontend.logs()[-2000:]
    assert all(line["level"] == "info" for line in gone)
    assert not [line for line in lines if line.get("level") == "error"]
    assert marker not in texts(shared_frontend)


# --- what the kernel is asked ----------------------------------------------------------------


def scope_of(accepted: socket.socket, listener: socket.socket) -> dict[str, object]:
    """An ASGI scope's addresses for the server side of a connection, ports as granian gives
    them (strings)."""
    client = accepted.getpeername()
    server = listener.getsockname()
    return {"client": (client[0], str(client[1])), "server": (server[0], str(server[1]))}


@pytest.mark.parametrize("family_host", [(socket.AF_INET, HOST), (socket.AF_INET6, "::1")])
def test_a_connection_is_still_connected_until_its_client_closes_or_resets_it(
    family_host: tuple[socket.AddressFamily, str],
) -> None:
    family, host = family_host
    try:
        listener = socket.create_server((host, 0), family=family)
    except OSError as exc:  # no IPv6 on loopback here
        pytest.skip(f"cannot listen on {host}: {exc}")
    with listener:
        for ending in ("close", "reset"):
            client = socket.create_connection(listener.getsockname()[:2], timeout=5)
            accepted, _ = listener.accept()
            with accepted:
                scope = scope_of(accepted, listener)
                assert still_connected(scope)
                if ending == "reset":  # SO_LINGER 0: close sends RST
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                wait_until(lambda scope=scope: not still_connected(scope), timeout=5)


def test_a_scope_without_network_addresses_is_not_still_connected() -> None:
    assert not still_connected({"client": ("127.0.0.1", 40000), "server": ("guestbook.test", 80)})
    assert not still_connected({"client": None, "server": None})
