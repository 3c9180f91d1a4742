"""Leader failover with Redis Sentinel, with real processes: three sentinels, a leader and two
followers on loopback (tests/sentinels.py), the store asked in-process and a real
`guestbook serve` asked over HTTP.

Every wait is for a state the servers report (the sentinels naming a leader, a follower's link
up); the one time bound asserted is the contract's (posts back within 10 s of a leader's death),
and the figures measured are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis

import load
from conftest import Frontend, MakeFrontend, base_env, cli, free_port, wait_until
from guestbook.errors import LeaderUnavailable
from guestbook.settings import Settings, discover
from guestbook.store import MessageStore, open_store
from sentinels import HA, SENTINEL_PASSWORD, SERVICE, rejoined, running_ha

# The contract's bound: posts succeed again within this long after the leader dies.
POSTS_BACK_WITHIN = 10.0
LOAD_SECONDS = 10.0


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[HA]:
    with running_ha(tmp_path / "ha") as ha:
        yield ha


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _settings(ha: HA, tmp: Path, **extra: str) -> Settings:
    return Settings.from_env(base_env(tmp, **ha.env(**extra)))


async def _store(ha: HA, tmp: Path, **extra: str) -> MessageStore:
    settings = _settings(ha, tmp, **extra)
    return open_store(settings, discover(settings))


@pytest.fixture
async def store(ha: HA, tmp_path: Path) -> AsyncIterator[MessageStore]:
    store = await _store(ha, tmp_path)
    await store.start()
    yield store
    await store.close()


def test_sentinels_win_over_every_other_store_setting(tmp_path: Path) -> None:
    settings = Settings.from_env(
        base_env(
            tmp_path,
            GUESTBOOK_SENTINELS="127.0.0.1:26379,[::1]:26380,sentinel-2",
            GUESTBOOK_REDIS_LEADER_URL="redis://127.0.0.1:6379/0",
            GET_HOSTS_FROM="dns",
        )
    )
    address = discover(settings)
    assert address.mode == "sentinel"
    assert address.sentinels == (("127.0.0.1", 26379), ("::1", 26380), ("sentinel-2", 26379))
    assert address.sentinel_service == "guestbook"
    assert address.leader_url is None


@pytest.mark.anyio
async def test_the_store_reads_and_writes_where_the_sentinels_say(
    ha: HA, store: MessageStore
) -> None:
    leader = ha.leader()
    assert store.leader_name == leader.url
    assert sorted(store.follower_names) == sorted(f.url for f in ha.followers())
    message = await store.append("asked the sentinels")
    assert leader.client().xlen("guestbook:messages") == 1
    for follower in ha.followers():
        wait_until(lambda f=follower: f.client().xlen("guestbook:messages") == 1)
    page = await store.page(10)
    assert [m.id for m in page.messages] == [message.id]
    assert page.source == "follower"


@pytest.mark.anyio
async def test_a_readonly_answer_makes_the_store_ask_the_sentinels_and_write_once_on_the_new_leader(
    ha: HA, tmp_path: Path
) -> None:
    seen: list[tuple[str, str, str | None]] = []
    store = await _store(ha, tmp_path)
    store.observer = lambda op, role, error: seen.append((op, role, error))
    # Asked once, not followed in the background: the store still believes the old leader
    # leads when the write goes out, as a frontend would between two looks.
    await store.refresh()
    try:
        old = ha.leader()
        assert store.leader_name == old.url
        ha.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = ha.wait_new_leader(old.port)
        wait_until(lambda: rejoined(old, new), timeout=30)
        assert store.leader_name == old.url  # not told yet

        result = await store.submit("after the failover", "client-1", idempotency_key="k-1")

        assert ("post", "leader", "READONLY") in seen
        assert store.leader_name == new.url
        stored = new.client().xrange("guestbook:messages")
        assert [fields["t"] for _, fields in stored] == ["after the failover"]
        assert stored[0][0] == result.message.id
    finally:
        await store.close()


def _all_messages(frontend: Frontend) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    before: str | None = None
    with frontend.http() as client:
        while True:
            params = {"limit": "200", **({"before": before} if before else {})}
            body = client.get("/api/messages", params=params).json()
            messages.extend(body["messages"])
            before = body.get("next")
            if not before:
                return messages


def _all_texts(frontend: Frontend) -> list[str]:
    return [m["text"] for m in _all_messages(frontend)]


def _all_ids(frontend: Frontend) -> list[str]:
    return [m["id"] for m in _all_messages(frontend)]


@pytest.mark.faults
def test_a_killed_leader_is_replaced_and_posts_come_back_with_nothing_acknowledged_lost(
    ha: HA, make_frontend: MakeFrontend
) -> None:
    frontend = make_frontend(**ha.env(GUESTBOOK_WRITE_REPLICAS="1"))
    run = uuid.uuid4().hex[:8]
    old = ha.leader()
    killed_at: list[float] = []

    def text(worker: int, n: int) -> str:
        return f"{run} w{worker} n{n}"

    jobs = [
        load.Job("read", load.get("/api/messages", limit="20"), 6, urls=(frontend.url,)),
        load.Job("read", load.get("/api/messages", limit="5", before="9999999999999-0"), 2,
                 urls=(frontend.url,)),
        load.Job(
            "post",
            load.post_json(text, key=lambda w, n: f"{run}-{w}-{n}"),
            2,
            pause=0.02,
            keep=lambda r: r.json()["text"] if r.status_code == 201 else None,
            urls=(frontend.url,),
        ),
    ]  # fmt: skip

    live = load.LiveClient([frontend.url], after="0-0")
    stop_live = asyncio.Event()

    async def drive() -> load.Record:
        following = asyncio.create_task(live.run(stop_live))
        await asyncio.wait_for(live.connected.wait(), 15)
        record = load.Record()

        async def kill() -> None:
            await asyncio.sleep(2.0)
            killed_at.append(record.now())
            await asyncio.to_thread(old.kill)

        await asyncio.gather(load.run(record, jobs, LOAD_SECONDS), kill())
        # The live client has until the feed reads the last post to get every one.
        stored = await asyncio.to_thread(_all_ids, frontend)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                while not set(stored) <= set(live.ids):
                    await asyncio.sleep(0.1)
        stop_live.set()
        await following
        return record

    record = asyncio.run(drive())
    new = ha.wait_new_leader(old.port)
    kill_time = killed_at[0]
    posts = record.of("post")
    acked_before = [o.kept for o in posts if o.status == 201 and o.ended < kill_time]
    acked = [o.kept for o in posts if o.status == 201]
    back = [o for o in posts if o.status == 201 and o.started > kill_time]
    assert back, "no post succeeded after the leader was killed"
    first_back = min(o.ended for o in back) - kill_time
    failed_posts = [o for o in posts if o.started > kill_time and o.status != 201]
    print(
        f"\nfailover: kill -> first 201 in {first_back:.2f} s; {len(acked_before)} posts acked "
        f"before the kill, {len(acked)} in all, {len(failed_posts)} answered otherwise "
        f"({sorted({str(o.status) for o in failed_posts})}); reads "
        f"{len(record.of('read'))}, failed {len(record.failed('read'))}, "
        f"p99 {load.ms(record.p(99, 'read'))}; new leader {new.port} (was {old.port})"
    )
    assert first_back <= POSTS_BACK_WITHIN
    assert record.failed("read") == []
    # Posts answer 503 while no leader takes them, never a 500 or a hang.
    assert {o.status for o in failed_posts} <= {503}
    stored = _all_texts(frontend)
    assert set(acked) <= set(stored)
    assert len(stored) == len(set(stored))  # nothing stored twice
    # The live feed moved to the new topology with no gap and nothing twice.
    assert set(_all_ids(frontend)) <= set(live.ids)
    assert len(live.ids) == len(set(live.ids))

    status = httpx.get(f"{frontend.url}/api/status", timeout=10)
    body = status.json()
    assert body["mode"] == "sentinel"
    assert body["leader"]["url"] == new.url
    assert body["leader"]["reachable"] is True
    sentinels = body["sentinel"]["sentinels"]
    assert [s["reachable"] for s in sentinels] == [True, True, True]
    assert {s["leader"] for s in sentinels} == {f"127.0.0.1:{new.port}"}
    assert SENTINEL_PASSWORD not in status.text
    assert SENTINEL_PASSWORD not in frontend.logs()


@pytest.mark.faults
@pytest.mark.anyio
async def test_the_old_leader_restarted_rejoins_as_a_follower_and_its_stale_data_is_never_read(
    ha: HA, store: MessageStore, tmp_path: Path
) -> None:
    # Another frontend reads: one that wrote nothing, so no read-your-writes rule sends it
    # to the leader and every page comes from whichever follower the store trusts.
    reader = await _store(ha, tmp_path)
    await reader.start()
    try:
        await _old_leader_rejoins(ha, store, reader)
    finally:
        await reader.close()


async def _old_leader_rejoins(ha: HA, store: MessageStore, reader: MessageStore) -> None:
    old = ha.leader()
    before = await store.append("before the failover")
    await asyncio.to_thread(old.kill)
    new = await asyncio.to_thread(ha.wait_new_leader, old.port)

    async def posted_on_new_leader() -> str:
        while True:
            try:
                return (await store.append("after the failover")).id
            except Exception:
                await asyncio.sleep(0.1)

    after = await asyncio.wait_for(posted_on_new_leader(), 30)
    # Restarted from its own file: a leader of an older data set until the sentinels turn it.
    await asyncio.to_thread(old.start)
    reads = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page = await reader.page(50)
        ids = [m.id for m in page.messages]
        assert after in ids, f"a stale page from the {page.source}"
        assert before.id in ids
        reads += 1
        # On a loaded machine the sentinels may fail over once more (1 s down-after): the old
        # leader must then follow whoever leads now, not the first new leader.
        with contextlib.suppress(AssertionError, redis.RedisError):
            new = ha.leader()
        if rejoined(old, new) and old.url in reader.follower_names:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the old leader never rejoined as a follower the store reads")
    print(f"\n{reads} reads while the old leader rejoined, none stale")
    assert reader.leader_name == new.url
    assert old.client().info("replication")["role"] == "slave"


def test_guestbook_status_shows_the_sentinels_and_the_leader_but_no_password(
    ha: HA, tmp_path: Path
) -> None:
    result = cli(tmp_path, None, "status", "--json", **ha.env())
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "sentinel"
    assert data["leader"]["url"] == ha.leader().url
    assert data["sentinel"]["service"] == SERVICE
    assert sorted(s["address"] for s in data["sentinel"]["sentinels"]) == sorted(
        s.address for s in ha.sentinels
    )
    text = cli(tmp_path, None, "status", **ha.env())
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("sentinel:  ") == 3
    for output in (result.stdout, result.stderr, text.stdout, text.stderr):
        assert SENTINEL_PASSWORD not in output


def test_readyz_names_the_leader_the_sentinels_chose(ha: HA, make_frontend: MakeFrontend) -> None:
    frontend = make_frontend(**ha.env())
    answer = httpx.get(f"{frontend.url}/readyz", timeout=10)
    assert answer.status_code == 200
    assert answer.text.startswith("ready\n")
    assert f"leader 127.0.0.1:{ha.leader().port}" in answer.text
    assert SENTINEL_PASSWORD not in answer.text


SERVER_PASSWORD = "server@pw/not:for-display"


def test_servers_that_ask_for_a_password_are_reached_with_guestbook_redis_password(
    tmp_path: Path, make_frontend: MakeFrontend
) -> None:
    with running_ha(tmp_path / "ha", server_password=SERVER_PASSWORD) as ha:
        frontend = make_frontend(
            **ha.env(GUESTBOOK_REDIS_PASSWORD=SERVER_PASSWORD, GUESTBOOK_WRITE_REPLICAS="1")
        )
        with frontend.http() as client:
            answer = client.post("/api/messages", json={"text": "behind a password"})
            assert answer.status_code == 201, answer.text
            wait_until(
                lambda: any(
                    m["text"] == "behind a password"
                    for m in client.get(
                        "/api/messages", params={"before": "9999999999999-0"}
                    ).json()["messages"]
                )
            )
            status = client.get("/api/status")
            ready = client.get("/readyz")
        assert status.json()["leader"]["url"] == f"redis://:***@127.0.0.1:{ha.leader().port}/0"
        assert all(f["reachable"] for f in status.json()["followers"])
        for shown in (status.text, ready.text, frontend.logs()):
            assert SERVER_PASSWORD not in shown
            assert quote(SERVER_PASSWORD, safe="") not in shown  # as it goes in a URL
            assert SENTINEL_PASSWORD not in shown


def test_a_frontend_whose_sentinels_do_not_answer_starts_and_says_so_on_readyz(
    tmp_path: Path, make_frontend: MakeFrontend
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    frontend = make_frontend(wait_ready=False, GUESTBOOK_SENTINELS=nobody)
    assert httpx.get(f"{frontend.url}/healthz", timeout=10).status_code == 200
    answer = httpx.get(f"{frontend.url}/readyz", timeout=10)
    assert answer.status_code == 503
    assert "sentinels: none has named a leader yet" in answer.text
    assert nobody in answer.text
    assert (
        httpx.post(f"{frontend.url}/api/messages", json={"text": "nowhere"}, timeout=10).status_code
        == 503
    )


@pytest.mark.faults
@pytest.mark.anyio
async def test_a_hung_leader_that_wakes_after_the_failover_takes_no_post(
    ha: HA, store: MessageStore
) -> None:
    old = ha.leader()
    await store.append("before the hang")
    for follower in ha.followers():
        await asyncio.to_thread(
            wait_until, lambda f=follower: f.client().xlen("guestbook:messages") == 1
        )
    old.hang()
    try:
        new = await asyncio.to_thread(ha.wait_new_leader, old.port)

        async def posted() -> str:
            while True:
                try:
                    return (await store.append("on the new leader")).id
                except LeaderUnavailable:
                    await asyncio.sleep(0.1)

        await asyncio.wait_for(posted(), 30)
    finally:
        old.resume()
    # Straight at the old leader, as a frontend that never asked the sentinels would write:
    # its followers have gone, so it refuses (NOREPLICAS), and once the sentinels turn it, it
    # is a replica (READONLY). Never a post that the failover would then discard.
    stale = MessageStore(old.url, timeout=2)
    try:
        for _ in range(20):
            with pytest.raises(LeaderUnavailable):
                await stale.append("split brain")
            await asyncio.sleep(0.1)
    finally:
        await stale.close()
    await asyncio.to_thread(wait_until, lambda: rejoined(old, new), 30)
    texts = [fields["t"] for _, fields in new.client().xrange("guestbook:messages")]
    assert texts == ["before the hang", "on the new leader"]
    assert store.leader_name == new.url
