"""GUESTBOOK_WORKERS=2: real `guestbook serve` processes whose two workers share the port and
the one embedded store their parent started; SIGTERM to the parent stops them all, and a worker
that is killed is started again."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx

from conftest import Frontend, MakeFrontend, wait_until


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`: their command lines by pid."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = cmdline.replace(b"\0", b" ").decode()
    return found


def workers_of(frontend: Frontend) -> list[int]:
    assert frontend.process is not None
    return sorted(
        p for p, cmd in children(frontend.process.pid).items() if "-m guestbook.workers" in cmd
    )


def stores_of(frontend: Frontend) -> list[int]:
    assert frontend.process is not None
    return [p for p, cmd in children(frontend.process.pid).items() if "valkey-server" in cmd]


def instance_of(client: httpx.Client) -> str:
    name = client.get("/api/status").json()["instance"]
    assert isinstance(name, str)
    return name


def one_client_per_worker(frontend: Frontend, count: int = 2) -> dict[str, httpx.Client]:
    """Kept-alive clients, one on each worker: new connections until each worker took one
    (the kernel spreads them; one in 2**30 chances that 30 in a row go to the same one)."""
    clients: dict[str, httpx.Client] = {}
    for _ in range(200):
        client = frontend.http()
        name = instance_of(client)
        if name in clients:
            client.close()
        else:
            clients[name] = client
        if len(clients) == count:
            return clients
    raise AssertionError(f"connections reached only {sorted(clients)}")


def test_two_workers_both_serve_on_the_one_port_and_share_one_embedded_store(
    make_frontend: MakeFrontend,
) -> None:
    frontend = make_frontend(GUESTBOOK_WORKERS="2")
    clients = one_client_per_worker(frontend)
    try:
        assert len(workers_of(frontend)) == 2
        assert len(stores_of(frontend)) == 1, "each worker must use the parent's store"
        statuses = [c.get("/api/status").json() for c in clients.values()]
        assert {s["mode"] for s in statuses} == {"embedded"}
        assert len({s["instance"] for s in statuses}) == 2
    finally:
        for client in clients.values():
            client.close()


def test_a_post_through_one_worker_is_read_through_the_other(make_frontend: MakeFrontend) -> None:
    frontend = make_frontend(GUESTBOOK_WORKERS="2")
    clients = one_client_per_worker(frontend)
    (first, through), (second, reader) = clients.items()
    try:
        response = through.post("/api/messages", json={"text": "from one worker to the other"})
        assert response.status_code == 201
        posted = response.json()
        assert instance_of(through) == first  # the post went through the first worker

        # The poster's cookie makes the other worker show it at once (read-your-writes)...
        cookie = f"gb_wrote={response.cookies['gb_wrote']}"
        mine = reader.get("/api/messages", headers={"Cookie": cookie})
        assert mine.json()["messages"][0] == posted
        # ...and its feed soon has it for everyone.
        wait_until(lambda: reader.get("/api/messages").json()["messages"][:1] == [posted])
        assert instance_of(reader) == second
    finally:
        for client in clients.values():
            client.close()


def test_sigterm_to_the_parent_stops_every_worker_and_the_store(
    make_frontend: MakeFrontend,
) -> None:
    frontend = make_frontend(GUESTBOOK_WORKERS="2", GUESTBOOK_SHUTDOWN_DRAIN="0")
    wait_until(lambda: len(workers_of(frontend)) == 2)
    # Both serving, not merely started: a worker still starting up has no SIGTERM handler
    # yet and would be stopped without its last line.
    wait_until(lambda: frontend.logs().count('"event": "listening on') == 2)
    started = workers_of(frontend) + stores_of(frontend)
    assert len(started) == 3

    assert frontend.stop(signal.SIGTERM) == 0

    assert [p for p in started if Path(f"/proc/{p}").exists()] == []
    logs = frontend.logs()
    assert logs.count('"event": "stopped"') == 3  # each worker, then the parent
    assert "embedded store stopped" in logs


def test_a_killed_worker_is_started_again_and_serves(make_frontend: MakeFrontend) -> None:
    frontend = make_frontend(GUESTBOOK_WORKERS="2")
    clients = one_client_per_worker(frontend)
    for client in clients.values():
        client.close()
    victim = workers_of(frontend)[0]

    os.kill(victim, signal.SIGKILL)

    wait_until(lambda: len(workers_of(frontend)) == 2 and victim not in workers_of(frontend))
    assert frontend.process is not None
    assert frontend.process.poll() is None, "the parent must keep running"
    wait_until(lambda: len(frontend_instances(frontend)) == 2, timeout=30)
    assert "worker 1 died" in frontend.logs() or "worker 2 died" in frontend.logs()


def frontend_instances(frontend: Frontend) -> set[str]:
    """The workers that answer 40 new connections."""
    names = set()
    for _ in range(40):
        with contextlib.suppress(httpx.HTTPError):
            names.add(httpx.get(f"{frontend.url}/api/status", timeout=5).json()["instance"])
    return names
