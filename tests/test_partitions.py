"""Links cut and healed: the leader, the followers and the frontend each a host of its own in a
network namespace, one host's cable pulled (its port on the bridge set down) under load, then
put back. A partition, not a crash: the processes keep running and their sockets stay open, so
nothing is refused at once; every call must be bounded by the store's timeout.

The split-brain tests show what Redis guarantees to a leader cut off from its followers while
the frontend still reaches it, with and without `min-replicas-to-write`, by doing what a
failover does (promote a follower, make the old leader its replica) and counting the
acknowledged posts that survive it.

Each test prints one `FIGURES:` line; the bounds asserted are the contract's (posts answer
within 2 s, succeed again within 5 s of the leader's return), stated generously, not speed goals.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conftest import MakeFrontend, RedisServer, post, wait_until
from netns import NetnsFrontend, NetnsRedis, NetnsUnavailable, Network, Topology, start_topology

pytestmark = pytest.mark.faults

CONTRACT_DEADLINE = 2.0  # a post is answered (201 or 503) within this, leader or not
RECOVERY_DEADLINE = 5.0  # posts succeed again within this of the leader's return
# A read that meets a cut follower waits out the store timeout (0.5 s here) and moves on; this
# bound only says it never hangs.
READ_BOUND = 5.0
BEFORE_SECONDS = 1.5
CUT_SECONDS = 4.0
AFTER_SECONDS = 1.5
# Forces a read from the store (the first page is served from the frontend's memory).
STORE_READ = {"before": "99999999999999-0", "limit": "20"}
MAX_LAG = 2  # min-replicas-max-lag, seconds
STREAM = "guestbook:messages"


@pytest.fixture
def network() -> Iterator[Network]:
    try:
        net = Network.create()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces cannot be created here: {exc}")
    try:
        yield net
    finally:
        net.close()


@dataclass(frozen=True)
class Outcome:
    kind: str  # "read" or "post"
    start: float
    end: float
    status: int | None  # None: no answer (a transport error or a client timeout)
    text: str = ""
    content_type: str = ""

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Load:
    """Readers and writers in threads, each with its own connection, recording every answer."""

    frontend: NetnsFrontend
    readers: int = 4
    writers: int = 2
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for _ in range(self.readers):
            self._threads.append(threading.Thread(target=self._read, daemon=True))
        for i in range(self.writers):
            self._threads.append(threading.Thread(target=self._post, args=(i,), daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _read(self) -> None:
        with self.frontend.http() as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    status: int | None = client.get("/api/messages", params=STORE_READ).status_code
                except httpx.HTTPError:
                    status = None
                self._record(Outcome("read", start, time.monotonic(), status))
                time.sleep(0.01)

    def _post(self, writer: int) -> None:
        with self.frontend.http() as client:
            for n in range(1_000_000):
                if self._stop.is_set():
                    return
                text = f"w{writer}-{n}"
                start = time.monotonic()
                try:
                    response = client.post("/api/messages", json={"text": text})
                    status: int | None = response.status_code
                    kind = response.headers.get("content-type", "")
                except httpx.HTTPError:
                    status, kind = None, ""
                self._record(Outcome("post", start, time.monotonic(), status, text, kind))
                time.sleep(0.05)

    def of(self, kind: str, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.kind == kind and since <= o.start < until]


def p99(outcomes: list[Outcome]) -> float:
    seconds = sorted(o.seconds for o in outcomes)
    return statistics.quantiles(seconds, n=100)[98] if len(seconds) > 1 else sum(seconds)


def same_data(a: NetnsRedis, b: NetnsRedis) -> bool:
    """The same number of messages and the same newest one on both servers."""

    def seen(server: NetnsRedis) -> tuple[int, list[object]]:
        client = server.client()
        return client.xlen(STREAM), list(client.xrevrange(STREAM, count=1))

    return seen(a) == seen(b)


def page_reads(server: NetnsRedis) -> int:
    """XREVRANGE calls the server has answered: only the frontend's page reads send them."""
    stats = server.client().info("commandstats").get("cmdstat_xrevrange", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def test_cut_follower_link_moves_reads_to_the_leader_and_the_healed_follower_catches_up(
    network: Network, tmp_path: Path
) -> None:
    topo = start_topology(network, tmp_path)
    follower = topo.followers[0]
    with Load(topo.frontend) as load:
        time.sleep(BEFORE_SECONDS)
        network.cut(follower.host)
        cut = time.monotonic()
        time.sleep(CUT_SECONDS)
        network.heal(follower.host)
        healed = time.monotonic()
        wait_until(lambda: same_data(topo.leader, follower), timeout=30)
        caught_up = time.monotonic() - healed
        # Many reads, not one: a few reads given up on during the cut may still arrive with the
        # heal (retransmitted) and be answered to nobody.
        served_before = page_reads(follower)
        wait_until(lambda: page_reads(follower) > served_before + 20, timeout=30)
        serving = time.monotonic() - healed
        time.sleep(AFTER_SECONDS)

    reads = load.of("read")
    failed_reads = [o for o in reads if o.status != 200]
    during = load.of("read", cut, healed)
    posts = load.of("post")
    acknowledged = {o.text for o in posts if o.status == 201}
    print(
        f"FIGURES: reads={len(reads)} failed_reads={len(failed_reads)} "
        f"reads_during_cut={len(during)} p99_read_during_cut={p99(during):.3f}s "
        f"max_read_during_cut={max(o.seconds for o in during):.3f}s "
        f"posts={len(posts)} failed_posts={len(posts) - len(acknowledged)} "
        f"catch_up_after_heal={caught_up:.3f}s follower_serving_after_heal={serving:.3f}s"
    )
    assert failed_reads == []
    assert during, "no read ran while the link was cut"
    assert max(o.seconds for o in reads) < READ_BOUND
    # Posts never needed the follower: none failed, and the healed follower has every one.
    assert [o for o in posts if o.status != 201] == []
    assert acknowledged <= topo.stored_texts(follower)


def test_cut_leader_link_makes_posts_503_fast_reads_stay_and_nothing_acknowledged_is_lost(
    network: Network, tmp_path: Path
) -> None:
    topo = start_topology(network, tmp_path)
    follower = topo.followers[0]
    with Load(topo.frontend) as load:
        time.sleep(BEFORE_SECONDS)
        network.cut(topo.leader.host)
        cut = time.monotonic()
        time.sleep(CUT_SECONDS)
        network.heal(topo.leader.host)
        healed = time.monotonic()
        wait_until(
            lambda: any(o.status == 201 for o in load.of("post", since=healed)),
            timeout=RECOVERY_DEADLINE + 10,
        )
        time.sleep(AFTER_SECONDS)

    reads = load.of("read")
    posts = load.of("post")
    refused = [o for o in posts if o.status == 503]
    first_503 = min(o.end for o in refused) - cut if refused else float("nan")
    recovered = min(o.end for o in load.of("post", since=healed) if o.status == 201) - healed
    acknowledged = {o.text for o in posts if o.status == 201}
    print(
        f"FIGURES: reads={len(reads)} failed_reads={sum(o.status != 200 for o in reads)} "
        f"posts={len(posts)} posts_503={len(refused)} "
        f"unanswered_posts={sum(o.status is None for o in posts)} "
        f"time_to_first_503={first_503:.3f}s "
        f"max_post_answer={max(o.seconds for o in posts):.3f}s "
        f"first_201_after_heal={recovered:.3f}s"
    )
    assert [o for o in reads if o.status != 200] == []
    assert refused, "no post was refused while the leader was cut off"
    assert {o.status for o in posts} <= {201, 503}  # every post answered, none hung
    assert max(o.seconds for o in posts) < CONTRACT_DEADLINE
    assert {o.content_type for o in refused} == {"application/problem+json"}
    assert recovered < RECOVERY_DEADLINE
    # Every acknowledged post is on the leader, and on the follower once it has caught up.
    assert acknowledged <= topo.stored_texts()
    wait_until(lambda: same_data(topo.leader, follower), timeout=30)
    assert acknowledged <= topo.stored_texts(follower)


def replication_offset(follower: NetnsRedis) -> int:
    """How much of the leader's stream the follower has processed, asked inside its own host
    (its link is cut)."""
    info = follower.cli("INFO", "replication")
    found = re.search(r"^slave_repl_offset:(\d+)", info, re.MULTILINE)
    assert found is not None, info
    return int(found.group(1))


@dataclass(frozen=True)
class SplitBrain:
    """What became of posts to a leader cut off from its followers, through a failover."""

    acknowledged_isolated: set[str]
    refused_not_stored: list[Outcome]
    refused_but_stored: list[Outcome]
    posts_after_refusal_bound: list[Outcome]
    lost: set[str]
    first_refusal: float
    stored_before_failover: set[str]


def isolate_leader_then_fail_over(
    topo: Topology, isolated_seconds: float, refusal_bound: float
) -> SplitBrain:
    """Cut every follower off from the leader (the frontend still reaches it) and post for
    `isolated_seconds`; then fail over as Sentinel would: promote the follower that has
    processed the most of the replication stream, point the others at it, heal the links, and
    make the old leader a replica of the new one."""
    network = topo.network
    with Load(topo.frontend, readers=0, writers=2) as load:
        time.sleep(BEFORE_SECONDS)
        for follower in topo.followers:
            network.cut(follower.host)
        cut = time.monotonic()  # from here on no follower can confirm anything
        time.sleep(isolated_seconds)
    stored = topo.stored_texts()  # the old leader's data, read while it is still isolated
    new_leader = max(topo.followers, key=replication_offset)
    others = [f for f in topo.followers if f is not new_leader]
    new_leader.cli("REPLICAOF", "NO", "ONE")
    for follower in others:
        follower.cli("REPLICAOF", new_leader.address, "6379")
    for follower in topo.followers:
        network.heal(follower.host)
    topo.leader.client().replicaof(new_leader.address, "6379")
    for server in (topo.leader, *others):
        server.wait_synced(timeout=30)
    wait_until(lambda: same_data(new_leader, topo.leader), timeout=30)

    isolated = load.of("post", since=cut)
    acknowledged = {o.text for o in load.of("post") if o.status == 201}
    survived = topo.stored_texts(new_leader)
    refused = [o for o in isolated if o.status != 201]
    not_stored = [o for o in refused if o.text not in stored]
    return SplitBrain(
        acknowledged_isolated={o.text for o in isolated if o.status == 201},
        refused_not_stored=not_stored,
        refused_but_stored=[o for o in refused if o.text in stored],
        posts_after_refusal_bound=load.of("post", since=cut + refusal_bound),
        lost=acknowledged - survived,
        first_refusal=min((o.start for o in not_stored), default=float("nan")) - cut,
        stored_before_failover=stored,
    )


def test_isolated_leader_with_min_replicas_refuses_posts_and_loses_no_acknowledged_one(
    network: Network, tmp_path: Path
) -> None:
    """The guarantee: `min-replicas-to-write 1` with `min-replicas-max-lag 2` on the leader, and
    GUESTBOOK_WRITE_REPLICAS=1 on the frontend. Cut off from its followers, the leader keeps
    taking writes only until its last follower's acknowledgement is older than max-lag, and the
    frontend answers those 503 (no follower confirmed them); from then on it refuses them
    outright: 503 and nothing stored. No acknowledged post is lost in the failover."""
    topo = start_topology(
        network,
        tmp_path,
        followers=2,
        leader_args=("--min-replicas-to-write", "1", "--min-replicas-max-lag", str(MAX_LAG)),
        GUESTBOOK_WRITE_REPLICAS="1",
    )
    # Followers acknowledge once a second, the leader counts them once a second in whole
    # seconds: refusal comes between max-lag + 1 and max-lag + 3 s after the cut.
    refusal_bound = MAX_LAG + 4.0
    result = isolate_leader_then_fail_over(topo, refusal_bound + 2.0, refusal_bound)
    print(
        f"FIGURES: acknowledged_while_isolated={len(result.acknowledged_isolated)} "
        f"answered_503_but_stored={len(result.refused_but_stored)} "
        f"refused_not_stored={len(result.refused_not_stored)} "
        f"time_to_refusal={result.first_refusal:.3f}s "
        f"acknowledged_lost_in_failover={len(result.lost)}"
    )
    assert result.acknowledged_isolated == set()
    assert result.lost == set()
    assert result.refused_not_stored, "the isolated leader never refused a write"
    assert result.posts_after_refusal_bound
    for outcome in result.posts_after_refusal_bound:
        assert outcome.status == 503
        assert outcome.content_type == "application/problem+json"
        assert outcome.text not in result.stored_before_failover


def test_isolated_leader_without_min_replicas_takes_posts_that_a_failover_discards(
    network: Network, tmp_path: Path
) -> None:
    """The trap: with neither setting, the isolated leader acknowledges every post (201) for as
    long as the partition lasts, and a failover on the followers' side throws all of them away
    when the old leader comes back as a replica of the new one."""
    topo = start_topology(network, tmp_path, followers=2)
    result = isolate_leader_then_fail_over(topo, MAX_LAG + 6.0, MAX_LAG + 4.0)
    print(
        f"FIGURES: acknowledged_while_isolated={len(result.acknowledged_isolated)} "
        f"refused={len(result.refused_not_stored) + len(result.refused_but_stored)} "
        f"acknowledged_lost_in_failover={len(result.lost)}"
    )
    assert result.acknowledged_isolated, "no post was taken while the leader was isolated"
    assert result.refused_not_stored == result.refused_but_stored == []
    # Every post acknowledged in isolation is gone, and with them any acknowledged just
    # before the cut that replication had not yet carried over.
    assert result.acknowledged_isolated <= result.lost


@pytest.mark.parametrize("write_replicas", ["0", "1"])
def test_leader_short_of_followers_refuses_posts_with_503_and_stores_nothing(
    tmp_path: Path, make_frontend: MakeFrontend, write_replicas: str
) -> None:
    """The refusal itself, on loopback: a leader with `min-replicas-to-write 1` and no follower
    answers NOREPLICAS, to a plain script call and to one pipelined with WAIT alike."""
    leader = RedisServer(tmp_path / "leader").start()
    try:
        leader.client().config_set("min-replicas-to-write", 1)
        frontend = make_frontend(
            GUESTBOOK_REDIS_LEADER_URL=leader.url, GUESTBOOK_WRITE_REPLICAS=write_replicas
        )
        refused = post(frontend, "with no follower in step")
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert leader.client().xlen(STREAM) == 0
    finally:
        leader.kill()
