"""Memory floors beside the live feed's figures: what the server alone costs (`hello_asgi.py`
idle and holding N open event streams) and what importing guestbook's dependencies costs a
process that serves nothing. The live feed's RSS (`sse_latency.py`) is read against these.

    uv run python bench/memory_floor.py --clients 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from read_path import HOST, ROOT, free_port, wait_http

REQUEST = b"GET /stream HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
# What `guestbook serve` imports from outside the project, and nothing of its own.
DEPENDENCIES = (
    "asyncio, uvloop, granian.server.embed, fastapi, pydantic_settings, redis.asyncio, "
    "redis.asyncio.sentinel, jinja2, prometheus_client"
)
# What the bare server imports: its RSS idle less this is what the running server itself holds
# (its runtime and threads), which guestbook's process holds as well.
SERVER_IMPORTS = "asyncio, json, uvloop, granian.server.embed"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


def server_floor(clients: int) -> dict[str, float]:
    """RSS of the bare server idle, and holding `clients` open streams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(clients + 256, hard), hard))
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "hello_asgi.py"), str(port)])
    sockets: list[socket.socket] = []
    try:
        wait_http(f"http://{HOST}:{port}/")
        time.sleep(0.5)
        idle = rss_mb(server.pid)
        for _ in range(clients):
            sock = socket.create_connection((HOST, port), timeout=10)
            sock.sendall(REQUEST)
            sockets.append(sock)
        for sock in sockets:
            if not sock.recv(4096):
                raise RuntimeError("a stream closed at once")
        time.sleep(0.5)
        return {"idle": idle, "streams": rss_mb(server.pid)}
    finally:
        for sock in sockets:
            sock.close()
        server.terminate()
        server.wait(10)


def imports_floor(modules: str = DEPENDENCIES) -> float:
    """RSS of a process that imports `modules` and does nothing else."""
    code = (
        f"import {modules}, pathlib\n"
        "line = [l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmRSS:')][0]\n"
        "print(int(line.split()[1]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout.strip()) / 1024, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    args = parser.parse_args()
    result = {"clients": args.clients, "server": server_floor(args.clients)}
    result["imports"] = imports_floor()
    result["server_imports"] = imports_floor(SERVER_IMPORTS)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
