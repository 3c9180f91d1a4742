"""Take `docs/status-3.png`, `docs/status-5.png` and `docs/status-2.png`: the `/status` page as
the tutorial's `kubectl scale deployment frontend --replicas=N` leaves it, at 3, then 5, then
2 frontends.

Runs what the cluster would, on loopback: a Valkey leader and two followers (the binary the
project ships), and `guestbook serve` processes named like the pods of the `frontend`
Deployment (GUESTBOOK_INSTANCE=frontend-xxxxxxxxxx-yyyyy). Scaling up starts more of them;
scaling down sends SIGTERM, as the kubelet does. One headless Chromium keeps the page of the
first frontend open and is photographed once the page, redrawing itself, shows the count.

    uv run python scripts/docs/status_screenshots.py [--out docs] [--chromium PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from chromium import CHROMIUM_ARGS, default_chromium
from playwright.sync_api import Page, expect, sync_playwright

from guestbook.embedded import server_binary

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
# A ReplicaSet's pod names: the Deployment's name, the pod template's hash, a random suffix.
TEMPLATE_HASH = "7d4b9c8f6d"
SUFFIXES = ["x2kqp", "m8vzt", "c4jrn", "h7wfd", "p9slb"]
STEPS = [3, 5, 2]
# Short: a full-page screenshot grows to the page, and no taller.
WIDTH, HEIGHT = 1100, 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, timeout: float = 30.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise SystemExit(f"not within {timeout} s: {check}")


class Processes:
    """Every process started, stopped on the way out whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []

    def valkey(self, name: str, leader_port: int | None = None) -> int:
        port = free_port()
        data = self.workdir / name
        data.mkdir()
        args = [str(server_binary()), "--port", str(port), "--bind", HOST, "--dir", str(data),
                "--save", "", "--logfile", str(data / "server.log")]  # fmt: skip
        if leader_port is not None:
            args += ["--replicaof", HOST, str(leader_port)]
        self.started.append(subprocess.Popen(args))
        wait_until(lambda: socket.create_connection((HOST, port), timeout=1).close() is None)
        return port

    def frontend(
        self, name: str, leader: int, followers: list[int]
    ) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GUESTBOOK_", "REDIS_"))}
        env.pop("GET_HOSTS_FROM", None)
        env.update(
            GUESTBOOK_HOST=HOST,
            GUESTBOOK_PORT=str(port),
            GUESTBOOK_INSTANCE=name,
            GUESTBOOK_DATA_DIR=str(self.workdir / name),
            GUESTBOOK_REDIS_LEADER_URL=f"redis://{HOST}:{leader}/0",
            GUESTBOOK_REDIS_FOLLOWER_URL=",".join(f"redis://{HOST}:{p}/0" for p in followers),
            GUESTBOOK_LOG_FORMAT="json",
        )
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "guestbook", "serve"], env=env, stdout=log, stderr=log
        )
        self.started.append(process)
        url = f"http://{HOST}:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, 60)
        return url, process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def topology() -> Iterator[tuple[Processes, int, list[int]]]:
    with tempfile.TemporaryDirectory(prefix="guestbook-status-") as tmp:
        processes = Processes(Path(tmp))
        try:
            leader = processes.valkey("leader")
            followers = [processes.valkey(f"follower-{i}", leader) for i in range(2)]
            yield processes, leader, followers
        finally:
            processes.stop_all()


def shows(page: Page, count: int) -> None:
    """The page, redrawn by its script (not the snapshot it was served as), lists `count`."""
    expect(page.locator("#live")).to_be_visible(timeout=30_000)
    expect(page.locator("#frontends li.frontend")).to_have_count(count, timeout=30_000)
    expect(page.locator("#frontend-count")).to_have_text(str(count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default=default_chromium())
    args = parser.parse_args()
    if not args.chromium:
        raise SystemExit("no Chromium found (Debian: apt-get install chromium)")
    names = [f"frontend-{TEMPLATE_HASH}-{suffix}" for suffix in SUFFIXES]
    with topology() as (processes, leader, followers), sync_playwright() as playwright:
        running: list[tuple[str, subprocess.Popen[bytes]]] = []
        browser = playwright.chromium.launch(
            executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for count in STEPS:
            while len(running) < count:
                running.append(processes.frontend(names[len(running)], leader, followers))
            while len(running) > count:
                _, process = running.pop()
                process.send_signal(signal.SIGTERM)  # a SIGTERMed frontend drops off at once
                process.wait(30)
            if page.url == "about:blank":
                # The page of the first frontend, which stays through every step.
                for text in ("Hello from the tutorial", "Scaled to five and back"):
                    httpx.post(f"{running[0][0]}/api/messages", json={"text": text}, timeout=10)
                page.goto(f"{running[0][0]}/status")
            shows(page, count)
            # Each frontend's requests are counted in its record, refreshed every few seconds.
            page.wait_for_timeout(1500)
            target = args.out / f"status-{count}.png"
            page.screenshot(path=str(target), full_page=True)
            print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}: "
                  f"{count} frontends")  # fmt: skip
        browser.close()


if __name__ == "__main__":
    main()
