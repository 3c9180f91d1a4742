"""Every benchmark in one run, written up as docs/benchmarks.md with plots (docs/bench-*.png).

Starts, on loopback only: a Valkey leader and two followers (the binary the project ships),
seeded directly (a Lua loop of XADDs on the leader: ten million messages in seconds); the
baselines, a bare ASGI hello-world on granian with `guestbook serve`'s settings and a Starlette
hello-world on uvicorn; and `guestbook serve` on the leader and followers, restarted at each
size. wrk (or, without it, a Python generator) drives each read path for --seconds; then posts
(on the cluster, with and without appendfsync, and on the embedded store), two workers
against one, the live feed (bench/sse_latency.py) and the store's own floor.

    uv run --group bench python bench/run.py                          # 10², 10⁴, 10⁶, 10⁷
    uv run --group bench python bench/run.py --sizes 100,10000 --seconds 3 --quick

Figures are ratios to the baselines measured in the same run. Servers run on one core and wrk
and Valkey on the other, where there are two.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import redis
import report
from read_path import HOST, ROOT, free_port, pin, start_valkey, wait_http, wait_synced

import load

STREAM = "guestbook:messages"
START_MS = 1_700_000_000_000
TEXT = "A message of a typical length, with a comma, some words and an emoji 🎉"
# Appends in one EVAL: a script blocks the server while it runs, so in slices.
SEED_SLICE = 200_000
SEED_SCRIPT = """
local first = tonumber(ARGV[1])
for i = first, first + tonumber(ARGV[2]) - 1 do
  redis.call('XADD', KEYS[1], (tonumber(ARGV[3]) + i) .. '-0', 't', ARGV[4] .. ' #' .. i)
end
return 1
"""
WINDOW = 10_000


def seed_to(client: redis.Redis, size: int) -> None:
    """Grow the stream to `size` messages, ids START_MS+i."""
    have = int(client.xlen(STREAM))
    while have < size:
        count = min(SEED_SLICE, size - have)
        client.eval(SEED_SCRIPT, 1, STREAM, str(have), str(count), str(START_MS), TEXT)
        have += count


def message_id(index: int) -> str:
    return f"{START_MS + index}-0"


@contextmanager
def process(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    try:
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def frontend_env(port: int, store: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GUESTBOOK_", "REDIS_"))},
        "GUESTBOOK_HOST": HOST,
        "GUESTBOOK_PORT": str(port),
        "GUESTBOOK_RATE_LIMIT": "0",
        "GUESTBOOK_LOG_LEVEL": "warning",
        **store,
        **extra,
    }


@contextmanager
def frontend(store: dict[str, str], pinned: bool = True, **extra: str) -> Iterator[str]:
    port = free_port()
    cmd = [*(pin(1) if pinned else []), sys.executable, "-m", "guestbook", "serve"]
    with process(cmd, env=frontend_env(port, store, **extra)) as child:
        url = f"http://{HOST}:{port}"
        wait_http(f"{url}/readyz", timeout=300)
        if pinned:
            # The embedded store is the server's child and inherits its core: moved to the
            # other one, where every other Valkey of the run is, or it takes the core the
            # server is measured on (it halved the posts it was measured with).
            pin_children(child.pid, 0)
        # Until the feed has read the newest messages: then reads come from memory.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and counters(url)["hit"] == 0:
            httpx.get(f"{url}/api/messages?limit=1")
            time.sleep(0.2)
        yield url


def pin_children(pid: int, core: int) -> None:
    """Pin the processes `pid` started (all their threads) to `core`, where pinning is used."""
    if not pin(core):
        return
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), child],
                       stdout=subprocess.DEVNULL, check=False)  # fmt: skip


def settle(pids: list[int], idle: float = 0.05, patience: float = 120.0) -> float:
    """Seconds until these processes together use under `idle` of a core over one second: a
    follower that has just loaded ten million messages, or a leader freeing its fork's pages,
    would otherwise take the core wrk runs on while a figure is measured."""
    started = time.monotonic()

    def cpu() -> float:
        ticks = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    while time.monotonic() - started < patience:
        before = cpu()
        time.sleep(1.0)
        if cpu() - before < idle:
            break
    return time.monotonic() - started


def counters(url: str) -> dict[str, float]:
    """Page reads from memory (hit) and from the store (miss), and store calls made by
    requests (the feed's blocking reads and the presence record excepted)."""
    found = {"hit": 0.0, "miss": 0.0, "store_calls": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        cache = re.match(r'guestbook_page_cache_total\{result="(hit|miss)"\} (\S+)', line)
        if cache:
            found[cache[1]] = float(cache[2])
        call = re.match(r'guestbook_store_calls_total\{operation="([a-z_]+)",\S*\} (\S+)', line)
        if call and call[1] not in ("watch", "last_id", "presence"):
            found["store_calls"] += float(call[2])
    return found


def measure(name: str, url: str, args: argparse.Namespace, **kw: Any) -> dict[str, Any]:
    load.run(url, 1, args.connections, pin=pin(0), **kw)  # warm-up
    base = url.split("/", 3)
    metrics_url = "/".join(base[:3])
    before = counters(metrics_url)
    figures = load.run(url, args.seconds, args.connections, pin=pin(0), **kw)
    after = counters(metrics_url)
    served = (after["hit"] + after["miss"]) - (before["hit"] + before["miss"])
    row = {"path": name, **asdict(figures)}
    row["from_memory"] = (after["hit"] - before["hit"]) / served if served else None
    row["store_calls_per_request"] = (
        (after["store_calls"] - before["store_calls"]) / figures.requests
        if figures.requests
        else None
    )
    print(f"  {name:<28} {figures.rps:>9,.0f} req/s  p50 {figures.p50_ms:.2f} ms  "
          f"p99 {figures.p99_ms:.2f} ms  errors {figures.errors}", flush=True)  # fmt: skip
    return row


def hello(args: argparse.Namespace, post: bool = False) -> dict[str, dict[str, Any]]:
    """The two hello-worlds' figures (and with `post`, the bare server's POST floor)."""
    out: dict[str, dict[str, Any]] = {}
    port = free_port()
    with process([*pin(1), sys.executable, str(ROOT / "bench" / "hello_asgi.py"), str(port)]):
        wait_http(f"http://{HOST}:{port}/")
        load.run(f"http://{HOST}:{port}/", 1, args.connections, pin=pin(0))
        figures = load.run(f"http://{HOST}:{port}/", args.seconds, args.connections, pin=pin(0))
        out["granian"] = asdict(figures)
        if post:
            posted = load.run(f"http://{HOST}:{port}/api/messages", args.seconds,
                              args.connections, post=True, pin=pin(0))  # fmt: skip
            out["granian_post"] = asdict(posted)
    port = free_port()
    uvicorn = [*pin(1), sys.executable, "-m", "uvicorn", "hello:app", "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
    with process(uvicorn, cwd=ROOT / "bench"):
        wait_http(f"http://{HOST}:{port}/")
        load.run(f"http://{HOST}:{port}/", 1, args.connections, pin=pin(0))
        figures = load.run(f"http://{HOST}:{port}/", args.seconds, args.connections, pin=pin(0))
        out["uvicorn"] = asdict(figures)
    for name, row in out.items():
        print(f"baseline {name}: {row['rps']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms", flush=True)
    return out


# Set by the server for each answer it sends, not by the app.
_SERVER_HEADERS = {"date", "server", "connection", "transfer-encoding"}


def record(url: str, tmp: Path) -> Path:
    """The answer at `url` as guestbook sent it (status, headers, body), for `same_bytes`."""
    answer = httpx.get(url, timeout=10)
    recorded = tmp / "first-page.json"
    recorded.write_text(json.dumps({
        "status": answer.status_code,
        "headers": [(k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in answer.headers.raw if k.decode("latin-1").lower()
                    not in _SERVER_HEADERS],
        "body": answer.content.decode("utf-8"),
    }))  # fmt: skip
    return recorded


def same_bytes(recorded: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The bare server answering the first page's own bytes (its status, headers and body as
    guestbook sent them): what that answer costs the server before any of guestbook's work.
    Measured with no frontend running, as the other baselines are."""
    answer = json.loads(recorded.read_text())
    port = free_port()
    hello = [*pin(1), sys.executable, str(ROOT / "bench" / "hello_asgi.py"), str(port),
             str(recorded)]  # fmt: skip
    with process(hello):
        wait_http(f"http://{HOST}:{port}/")
        load.run(f"http://{HOST}:{port}/", 1, args.connections, pin=pin(0))
        figures = load.run(f"http://{HOST}:{port}/", args.seconds, args.connections, pin=pin(0))
    size = len(answer["body"].encode("utf-8"))
    row = {**asdict(figures), "bytes": size, "headers": len(answer["headers"])}
    print(f"  granian, the first page's bytes {figures.rps:,.0f} req/s", flush=True)
    return row


def read_paths(size: int) -> dict[str, str]:
    """The read paths measured at `size`: path and query."""
    # A page in the middle of the window (of the guestbook, when it is smaller).
    within = message_id(size - min(WINDOW, size) // 2)
    paths = {
        "first page (API)": "/api/messages?limit=20",
        "first page (HTML)": "/",
        "older page (API, window)": f"/api/messages?limit=20&before={within}",
        "older page (HTML, window)": f"/?before={within}",
        "legacy get": "/guestbook.php?cmd=get",
    }
    if size > 2 * WINDOW:
        paths["older page (API, beyond)"] = f"/api/messages?limit=20&before={message_id(size // 2)}"
    return paths


def floor(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """The store's own speed for a page read: redis-benchmark (or valkey-benchmark) when
    installed, else a redis-py loop, one request at a time."""
    tool = shutil.which("valkey-benchmark") or shutil.which("redis-benchmark")
    command = ["XREVRANGE", STREAM, "+", "-", "COUNT", "20"]
    if tool:
        out = subprocess.run(
            [*pin(0), tool, "-h", HOST, "-p", str(port), "-c", str(args.connections),
             "-n", str(max(20_000, 20_000 * args.seconds)), "-q", *command],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        match = re.search(r"([\d.]+) requests per second, p50=([\d.]+) msec", out)
        rps, p50 = (float(match[1]), float(match[2])) if match else (0.0, float("nan"))
        return {"tool": Path(tool).name, "rps": rps, "p50_ms": p50}
    client = redis.Redis(host=HOST, port=port)
    count, end = 0, time.perf_counter() + args.seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        client.xrevrange(STREAM, "+", "-", count=20)
        count += 1
    return {"tool": "redis-py, 1 connection", "rps": count / (time.perf_counter() - started)}


def posts(url: str, args: argparse.Namespace, count_on: redis.Redis | None) -> dict[str, Any]:
    before = int(count_on.xlen(STREAM)) if count_on is not None else None
    figures = load.run(f"{url}/api/messages", args.seconds, args.connections, post=True,
                       pin=pin(0))  # fmt: skip
    row: dict[str, Any] = asdict(figures)
    if count_on is not None and before is not None:
        time.sleep(0.5)
        # Every acknowledged post must be stored (some in flight at the end are stored too).
        row["stored"] = int(count_on.xlen(STREAM)) - before
    print(f"  posts {figures.rps:,.0f}/s p50 {figures.p50_ms:.2f} ms errors {figures.errors}")
    return row


def live_feed(clients: int, messages: int, floor: bool = False) -> dict[str, Any]:
    """The live feed's latency with `clients` streams; with `floor`, the bare server's own
    fan-out (bench/hello_asgi.py) measured by the same clients."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sse_latency.py"), "--json",
         "--clients", str(clients), "--messages", str(messages), *(["--floor"] if floor else [])],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    name = "bare server" if floor else "live feed"
    print(f"  {name}, {clients} clients: {result['latency_ms_from_ack']}, {result['rss_mb']}")
    return result


def in_process() -> dict[str, float]:
    out = subprocess.run(
        [*pin(1), sys.executable, str(ROOT / "bench" / "in_process.py"), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    print(f"in process, µs CPU a request: {result}", flush=True)
    return result


def memory_floor(clients: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "memory_floor.py"), "--clients", str(clients)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(f"  memory floor: server {result['server']}, imports {result['imports']} MB")
    return result


def _commit() -> str | None:
    """The commit measured (with "+" when the tree has changes beside it), or None outside a
    git checkout: a committed run says which code its figures are of."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if changed else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,10000,1000000,10000000",
                        help="comma-separated guestbook sizes")  # fmt: skip
    parser.add_argument("--seconds", type=int, default=8, help="per figure")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--live-clients", type=int, default=1000)
    parser.add_argument("--live-big", action="store_true", help="also 10,000 live clients")
    parser.add_argument("--quick", action="store_true", help="label the report a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results: dict[str, Any] = {
        "generator": load.generator(),
        "seconds": args.seconds,
        "connections": args.connections,
        "cores": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "quick": args.quick,
        "command": " ".join(["uv run --group bench python bench/run.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _commit(),
    }
    print(f"load generator: {results['generator']}", flush=True)
    results["baselines"] = hello(args, post=True)
    # The hello-worlds again after each size: a size's paths are read against the mean of the
    # figures just before and just after them (report.baseline), so a machine whose speed
    # drifts over the run's minutes moves the yardstick with the figures.
    results["baselines_after"] = {}
    results["in_process"] = in_process()

    tmp = Path(tempfile.mkdtemp(prefix="gb-bench-"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        leader, leader_port = start_valkey(tmp / "leader")
        servers.append(leader)
        follower_ports = []
        for n in (1, 2):
            follower, port = start_valkey(tmp / f"follower{n}", replica_of=leader_port)
            servers.append(follower)
            follower_ports.append(port)
        client = redis.Redis(host=HOST, port=leader_port)
        store = {
            "GUESTBOOK_REDIS_LEADER_URL": f"redis://{HOST}:{leader_port}/0",
            "GUESTBOOK_REDIS_FOLLOWER_URL": ",".join(
                f"redis://{HOST}:{p}/0" for p in follower_ports
            ),
        }
        rows: list[dict[str, Any]] = []
        for size in sizes:
            started = time.monotonic()
            seed_to(client, size)
            for port in follower_ports:
                wait_synced(port, leader_port)
            seeded = time.monotonic() - started
            quiet = settle([s.pid for s in servers])
            print(f"{size:,} messages (seeded in {seeded:.1f} s, quiet after {quiet:.1f} s)",
                  flush=True)  # fmt: skip
            with frontend(store) as url:
                recorded = record(url + "/api/messages?limit=20", tmp)
                for name, path in read_paths(size).items():
                    rows.append({"size": size, **measure(name, url + path, args)})
            results["baselines_after"][str(size)] = hello(args)
            if size == sizes[0]:
                results["baselines"]["same_bytes"] = same_bytes(recorded, args)
                results["floor"] = floor(leader_port, args)
                with frontend(store, pinned=False) as url:
                    one = measure("first page, 1 worker", url + "/api/messages?limit=20", args)
                with frontend(store, pinned=False, GUESTBOOK_WORKERS="2") as url:
                    two = measure("first page, 2 workers", url + "/api/messages?limit=20", args)
                results["workers"] = {"one": one, "two": two}
        results["rows"] = rows

        print("posts", flush=True)
        post_rows: dict[str, Any] = {}
        with frontend(store) as url:
            post_rows["cluster, appendonly no"] = posts(url, args, client)
            client.config_set("appendonly", "yes")
            client.config_set("appendfsync", "always")
            time.sleep(1)  # the rewrite that turning it on starts
            post_rows["cluster, appendfsync always"] = posts(url, args, client)
            client.config_set("appendonly", "no")
        data = tmp / "embedded"
        with frontend({"GUESTBOOK_DATA_DIR": str(data)}) as url:
            embedded = redis.Redis(unix_socket_path=str(data / "valkey.sock"))
            post_rows["embedded (appendfsync always)"] = posts(url, args, embedded)
            # R5's yardstick: first-page reads on this frontend, just after its posts (before
            # them its guestbook is empty, and an empty page is cheaper than a full one).
            results["posts_reads"] = measure("first page (API), embedded store",
                                             url + "/api/messages?limit=20", args)  # fmt: skip
        results["posts"] = post_rows
    finally:
        for server in servers:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print("live feed", flush=True)
    results["memory_floor"] = memory_floor(args.live_clients)
    sizes = [(args.live_clients, 100), *([(10_000, 50)] if args.live_big else [])]
    results["live"] = {str(c): live_feed(c, m) for c, m in sizes}
    results["live_floor"] = {str(c): live_feed(c, m, floor=True) for c, m in sizes}
    results["load_after"] = os.getloadavg()[0]

    args.out.mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "run.json").write_text(json.dumps(results, indent=2))
    report.write(results, args.out)
    print(f"wrote {args.out / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
