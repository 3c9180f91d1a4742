"""Read-path benchmark: the guestbook's reads against a bare Starlette hello-world, same run.

Starts, on loopback only: a Valkey leader and one follower (the binary the project ships
with), a bare Starlette app on uvicorn (the baseline), and `guestbook serve` on the leader and
follower. wrk drives each for the same duration and connection count; the servers run pinned
to one core and wrk to the other where the machine has two. Every figure is reported as a
ratio to the baseline measured in this run, so machines of different speeds compare.

Scenarios, each at a small and a large guestbook (100 and --big messages):
  first page (API)   GET /api/messages?limit=20  (~1.3 KB of JSON)
  first page (HTML)  GET /
  deep page (API)    GET /api/messages?limit=20&before=<an id in the middle>  (store round trip)

    uv run python bench/read_path.py                 # 1,000,000 messages as the large case
    uv run python bench/read_path.py --big 10000000  # ten million (about 2 GB of RAM, ~3 min)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from guestbook.embedded import server_binary  # noqa: E402

HOST = "127.0.0.1"
TEXT = "A message of a typical length, with a comma, some words and an emoji 🎉"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pin(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core)]
    return []


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def start_valkey(
    workdir: Path, replica_of: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [str(server_binary()), "--port", str(port), "--bind", HOST, "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]  # fmt: skip
    if replica_of:
        args += ["--replicaof", HOST, str(replica_of)]
    process = subprocess.Popen([*pin(0), *args], stdout=subprocess.DEVNULL)
    client = redis.Redis(host=HOST, port=port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            client.ping()
            break
        except redis.RedisError:
            time.sleep(0.05)
    return process, port


def seed(port: int, count: int, start_ms: int) -> list[str]:
    """XADD `count` messages with explicit ids; returns a few ids to page from."""
    client = redis.Redis(host=HOST, port=port)
    client.delete("guestbook:messages")
    batch = 20_000
    marks: list[str] = []
    for offset in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(offset, min(count, offset + batch)):
            pipe.xadd("guestbook:messages", {"t": f"{TEXT} #{i}"}, id=f"{start_ms + i}-0")
        pipe.execute()
    marks.append(f"{start_ms + count // 2}-0")
    return marks


def wait_synced(port: int, leader_port: int) -> None:
    follower = redis.Redis(host=HOST, port=port)
    leader = redis.Redis(host=HOST, port=leader_port)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        info = follower.info("replication")
        if (
            info.get("master_link_status") == "up"
            and info.get("slave_repl_offset") == leader.info("replication")["master_repl_offset"]
        ):
            return
        time.sleep(0.2)
    raise RuntimeError("follower did not catch up")


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [*pin(0), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rps": rps,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def page_cache(url: str) -> dict[str, float]:
    """First-page reads answered from the live head (hit) or the store (miss) so far."""
    counts = {"hit": 0.0, "miss": 0.0}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        match = re.match(r'guestbook_page_cache_total\{result="(hit|miss)"\} ([\d.e+]+)', line)
        if match:
            counts[match[1]] = float(match[2])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=1_000_000, help="messages in the large case")
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "read_path.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="gb-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    results: dict[str, object] = {"connections": args.connections, "seconds": args.seconds}
    try:
        # Baseline: bare Starlette hello-world on uvicorn (uvloop + httptools).
        port = free_port()
        base = subprocess.Popen(
            [
                *pin(1),
                sys.executable,
                "-m",
                "uvicorn",
                "hello:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT / "bench",
        )
        processes.append(base)
        wait_http(f"http://{HOST}:{port}/")
        wrk(f"http://{HOST}:{port}/", 2, args.connections)  # warm-up
        baseline = wrk(f"http://{HOST}:{port}/", args.seconds, args.connections)
        base.send_signal(signal.SIGTERM)
        base.wait()
        results["baseline_hello_uvicorn"] = baseline
        print(f"baseline (Starlette hello-world on uvicorn): {baseline['rps']:,.0f} req/s")

        leader, leader_port = start_valkey(tmp / "leader")
        follower, follower_port = start_valkey(tmp / "follower", replica_of=leader_port)
        processes += [leader, follower]
        rows = []
        for label, count in (("small", 100), ("large", args.big)):
            started = time.monotonic()
            marks = seed(leader_port, count, start_ms=1_700_000_000_000)
            wait_synced(follower_port, leader_port)
            print(f"seeded {count:,} messages in {time.monotonic() - started:.1f} s")
            port = free_port()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("GUESTBOOK_")},
                "GUESTBOOK_PORT": str(port),
                "GUESTBOOK_REDIS_LEADER_URL": f"redis://{HOST}:{leader_port}/0",
                "GUESTBOOK_REDIS_FOLLOWER_URL": f"redis://{HOST}:{follower_port}/0",
                "GUESTBOOK_LOG_FORMAT": "json",
            }
            log = (tmp / f"serve-{label}.log").open("w")
            frontend = subprocess.Popen(
                [*pin(1), sys.executable, "-m", "guestbook", "serve"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            processes.append(frontend)
            url = f"http://{HOST}:{port}"
            wait_http(f"{url}/readyz")
            time.sleep(1.5)  # the live head syncs in the background
            size = len(httpx.get(f"{url}/api/messages?limit=20").content)
            scenarios = {
                "first page (API)": f"{url}/api/messages?limit=20",
                "first page (HTML)": f"{url}/",
                "deep page (API)": f"{url}/api/messages?limit=20&before={marks[0]}",
            }
            for name, target in scenarios.items():
                wrk(target, 2, args.connections)
                hits_before = page_cache(url)
                figures = wrk(target, args.seconds, args.connections)
                hits = page_cache(url)
                served = sum(hits.values()) - sum(hits_before.values())
                figures["from_memory"] = round(
                    (hits["hit"] - hits_before["hit"]) / served, 3) if served else 0.0  # fmt: skip
                ratio = figures["rps"] / baseline["rps"]
                rows.append({"case": label, "messages": count, "scenario": name,
                             "bytes": size if "API" in name else None, **figures,
                             "ratio_to_baseline": round(ratio, 3)})  # fmt: skip
                print(f"{label:>5} ({count:>10,}) {name:<18} {figures['rps']:>9,.0f} req/s "
                      f"= {ratio:.2f}x baseline, p99 {figures['p99_ms']:.1f} ms, "
                      f"non-2xx {figures['non_2xx']:.0f}, "
                      f"from memory {figures['from_memory']:.0%}")  # fmt: skip
            frontend.send_signal(signal.SIGTERM)
            frontend.wait(30)
            log.close()
        results["rows"] = rows
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"results: {args.out}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
