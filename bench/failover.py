"""Failover time with Redis Sentinel: how long after the leader dies posts succeed again.

Each run starts, on loopback only, a leader, two followers and three sentinels (the test
fixtures of tests/sentinels.py: `down-after-milliseconds 1000`, `failover-timeout 5000`,
`parallel-syncs 1`, quorum 2, `min-replicas-to-write 1` / `min-replicas-max-lag 5` on every
server) and one `guestbook serve` with `GUESTBOOK_SENTINELS` and `GUESTBOOK_WRITE_REPLICAS=1`.
Readers and posters run against the frontend; after two seconds the leader is SIGKILLed. It
reports, per run and over all: seconds from the kill to the first post answered 201, posts
acknowledged and then missing (must be 0), reads failed (must be 0).

    uv run python bench/failover.py            # 10 runs
    uv run python bench/failover.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
import load  # noqa: E402
from conftest import Frontend, base_env  # noqa: E402
from sentinels import DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, running_ha  # noqa: E402

KILL_AFTER = 2.0
LOAD_SECONDS = 12.0


def all_texts(frontend: Frontend) -> set[str]:
    texts: set[str] = set()
    before: str | None = None
    with frontend.http() as client:
        while True:
            params = {"limit": "200", **({"before": before} if before else {})}
            body = client.get("/api/messages", params=params).json()
            texts.update(m["text"] for m in body["messages"])
            before = body.get("next")
            if not before:
                return texts


def one_run(base: Path) -> tuple[float, int, int, int]:
    """(kill -> first 201 in s, acknowledged posts lost, reads failed, reads)."""
    with running_ha(base / "ha") as ha:
        env = base_env(base, **ha.env(GUESTBOOK_WRITE_REPLICAS="1"))
        frontend = Frontend(env, log_path=base / "serve.log").start()
        try:
            old = ha.leader()
            run = uuid.uuid4().hex[:8]
            jobs = [
                load.Job("read", load.get("/api/messages", limit="20"), 6, urls=(frontend.url,)),
                load.Job(
                    "post",
                    load.post_json(
                        lambda w, n: f"{run} w{w} n{n}", key=lambda w, n: f"{run}-{w}-{n}"
                    ),
                    2,
                    pause=0.02,
                    keep=lambda r: r.json()["text"] if r.status_code == 201 else None,
                    urls=(frontend.url,),
                ),
            ]
            killed: list[float] = []

            async def drive() -> load.Record:
                record = load.Record()

                async def kill() -> None:
                    await asyncio.sleep(KILL_AFTER)
                    killed.append(record.now())
                    await asyncio.to_thread(old.kill)

                await asyncio.gather(load.run(record, jobs, LOAD_SECONDS), kill())
                return record

            record = asyncio.run(drive())
            posts = record.of("post")
            back = [o.ended for o in posts if o.status == 201 and o.started > killed[0]]
            took = min(back) - killed[0] if back else float("inf")
            acked = {o.kept for o in posts if o.status == 201}
            lost = len(acked - all_texts(frontend))
            return took, lost, len(record.failed("read")), len(record.of("read"))
        finally:
            frontend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    times: list[float] = []
    lost_total = failed_total = 0
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
            took, lost, failed, reads = one_run(Path(tmp))
        times.append(took)
        lost_total += lost
        failed_total += failed
        print(
            f"run {i + 1}: first 201 {took:.2f} s after the kill; "
            f"{lost} acknowledged posts lost; {failed} of {reads} reads failed",
            flush=True,
        )
    print(
        f"\n{args.runs} runs, down-after-milliseconds {DOWN_AFTER_MS}, failover-timeout "
        f"{FAILOVER_TIMEOUT_MS}, quorum 2 of 3: kill -> first 201 median "
        f"{statistics.median(times):.2f} s, max {max(times):.2f} s; acknowledged posts lost "
        f"{lost_total}; reads failed {failed_total}"
    )


if __name__ == "__main__":
    main()
