"""Every frontend reports itself in the store: real `guestbook serve` processes on one leader
and two followers, each listing all of them in /api/status; one stopped with SIGTERM drops off
at once, one killed outright when its record lapses."""

from __future__ import annotations

import signal

import httpx

from conftest import Cluster, MakeFrontend, wait_until


def names(frontend_url: str) -> list[str]:
    status = httpx.get(f"{frontend_url}/api/status", timeout=5).json()
    return [f["name"] for f in status["frontends"]]


def test_every_frontend_lists_every_frontend_up(
    cluster: Cluster, make_frontend: MakeFrontend
) -> None:
    frontends = [make_frontend(cluster, GUESTBOOK_INSTANCE=f"frontend-{n}") for n in "abc"]
    for frontend in frontends:
        wait_until(lambda f=frontend: names(f.url) == ["frontend-a", "frontend-b", "frontend-c"])

    def entry() -> dict[str, object]:
        listed = httpx.get(f"{frontends[0].url}/api/status").json()["frontends"]
        [found] = [f for f in listed if f["name"] == "frontend-a"]
        assert isinstance(found, dict)
        return found

    assert set(entry()) == {"name", "started_at", "version", "requests", "live_clients"}
    # Refreshed every 5 s: the requests it has answered since show up in the next record.
    wait_until(lambda: int(str(entry()["requests"])) >= 1, timeout=20, interval=0.5)


def test_a_frontend_stopped_with_sigterm_drops_off_at_once_and_a_killed_one_lapses(
    cluster: Cluster, make_frontend: MakeFrontend
) -> None:
    stays = make_frontend(cluster, GUESTBOOK_INSTANCE="stays")
    stopped = make_frontend(cluster, GUESTBOOK_INSTANCE="stopped")
    killed = make_frontend(cluster, GUESTBOOK_INSTANCE="killed")
    wait_until(lambda: names(stays.url) == ["killed", "stays", "stopped"])
    assert stopped.stop(signal.SIGTERM) == 0
    assert names(stays.url) == ["killed", "stays"]  # gone before its process had ended
    killed.stop(signal.SIGKILL)
    # Its record lapses within 15 s (three missed refreshes); the contract allows 60.
    wait_until(lambda: names(stays.url) == ["stays"], timeout=60, interval=0.5)
