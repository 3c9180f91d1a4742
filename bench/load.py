"""Load generation for the benchmarks: wrk when it is installed (`apt-get install wrk`), else a
small asyncio generator of the same shape (keep-alive connections, one request in flight on
each). Both give requests per second and the p50 and p99 latency; the report says which ran.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# Each POST a text of its own, in this run and across runs (NONCE): the store holds a text
# repeated by one client for a moderator.
POST_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local body = '{"text":"bench post NONCE ' .. counter .. '"}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"""


@dataclass(frozen=True)
class Figures:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx answers and socket errors


def generator() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def run(
    url: str, seconds: float, connections: int, post: bool = False, pin: list[str] | None = None
) -> Figures:
    if generator() == "wrk":
        return _wrk(url, seconds, connections, post, pin or [])
    return asyncio.run(_python(url, seconds, connections, post))


_SCALE = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(out: str, percent: str) -> float:
    match = re.search(rf"\s{percent}%\s+([\d.]+)(us|ms|s)", out)
    return float(match[1]) * _SCALE[match[2]] if match else float("nan")


def _wrk(url: str, seconds: float, connections: int, post: bool, pin: list[str]) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        args = [*pin, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        if post:
            script = Path(tmp) / "post.lua"
            script.write_text(POST_SCRIPT.replace("NONCE", str(time.time_ns())))
            args += ["-s", str(script)]
        out = subprocess.run(
            [*args, "--latency", url], capture_output=True, text=True, check=True
        ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(bad[1]) if bad else 0
    if sockets:
        errors += sum(int(sockets[i]) for i in range(1, 5))
    return Figures(
        float(rps[1]) if rps else 0.0,
        _latency(out, "50"),
        _latency(out, "99"),
        int(total[1]) if total else 0,
        errors,
    )


async def _python(url: str, seconds: float, connections: int, post: bool) -> Figures:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    latencies: list[float] = []
    errors = 0
    counter = 0
    end = time.perf_counter() + seconds

    def request() -> bytes:
        nonlocal counter
        if not post:
            return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        counter += 1
        body = f'{{"text":"bench post {counter} {time.time_ns()}"}}'.encode()
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def one() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < end:
                started = time.perf_counter()
                writer.write(request())
                status = await reader.readuntil(b"\r\n")
                headers = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", headers)
                await reader.readexactly(int(length[1]) if length else 0)
                latencies.append((time.perf_counter() - started) * 1000)
                if not status.split()[1].startswith((b"2", b"3")):
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return Figures(len(latencies) / elapsed, cuts[49], cuts[98], len(latencies), errors)
