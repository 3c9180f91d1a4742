"""How the docs scripts start Chromium: headless, offline, from the machine's own package."""

from __future__ import annotations

import shutil

# Everything Chromium would fetch for itself is turned off: a screenshot needs nothing beyond
# the loopback frontend it photographs.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def default_chromium() -> str | None:
    """The installed Chromium (Debian names it chromium), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")
