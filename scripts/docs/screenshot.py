"""Take `docs/screenshot.png`: the guestbook page with a few messages, in headless Chromium.

Starts `guestbook serve` on the embedded store in a temporary data dir on a free loopback port,
imports a handful of messages written at different times, posts one more from the page itself
(so it arrives the JavaScript way), and saves the page.

    uv run python scripts/docs/screenshot.py [--out docs/screenshot.png] [--chromium PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from chromium import CHROMIUM_ARGS, default_chromium
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
MESSAGES = [
    (timedelta(days=3, hours=2), "First! Signing the guestbook from the tutorial cluster."),
    (timedelta(hours=26), "Scaled the frontend to 5 replicas; the footer changes on refresh."),
    (timedelta(hours=5), "Killed the leader on purpose: reads kept working, posts came back."),
    (
        timedelta(minutes=42),
        "Comma, quotes & <tags> all come through as plain text, as they should.",
    ),
    (timedelta(minutes=7), "Hello from Kraków, Tōkyō and São Paulo."),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--chromium", default=default_chromium())
    args = parser.parse_args()
    if not args.chromium:
        raise SystemExit("no Chromium found (Debian: apt-get install chromium)")

    with tempfile.TemporaryDirectory(prefix="gb-screenshot-") as tmp:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GUESTBOOK_")},
            "GUESTBOOK_HOST": HOST,
            "GUESTBOOK_PORT": str(port),
            "GUESTBOOK_DATA_DIR": str(Path(tmp) / "data"),
            "GUESTBOOK_LOG_LEVEL": "warning",
            # The footer names the instance: show what a Kubernetes pod name looks like.
            "HOSTNAME": "frontend-6c8f9d7b5-x2kqp",
        }
        now = datetime.now(UTC)
        lines = []
        for age, text in MESSAGES:
            at = now - age
            ms = int(at.timestamp() * 1000)
            created = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
            lines.append(json.dumps({"id": f"{ms}-0", "text": text, "created_at": created}))
        export = Path(tmp) / "messages.jsonl"
        export.write_text("\n".join(lines) + "\n")

        server = subprocess.Popen(
            [sys.executable, "-m", "guestbook", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://{HOST}:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("guestbook serve did not become ready")
                time.sleep(0.1)
            subprocess.run(
                [sys.executable, "-m", "guestbook", "import", str(export)], env=env, check=True
            )
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(
                    viewport={"width": 820, "height": 580}, device_scale_factor=2
                )
                page.goto(url)
                expect(page.locator("#live")).to_be_visible()
                page.locator("#text").fill("Posted just now: it shows up on every open page.")
                page.locator("#text").press("Enter")
                expect(page.locator("#messages li").first).to_contain_text("Posted just now")
                page.wait_for_timeout(1000)  # let the arrival highlight fade
                page.locator("#text").blur()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(15)
    print(f"saved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
