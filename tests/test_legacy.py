"""The original PHP frontend's API, byte for byte; its `get` answered from the feed's memory,
equal to what the store holds."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from conftest import Cluster, MakeFrontend, app_in_process
from guestbook import moderation
from guestbook.reads import LEGACY_LIMIT, legacy_list
from guestbook.state import AppState
from guestbook.store import MessageStore


@pytest.mark.parametrize("path", ["/guestbook.php", "/guestbook"])
def test_kubernetes_conformance_flow_byte_for_byte(
    cluster: Cluster, make_frontend: MakeFrontend, path: str
) -> None:
    frontend = make_frontend(cluster)
    with frontend.http() as gb:
        assert gb.get(f"{path}?cmd=get&key=messages&value=").content == b'{"data": ""}'
        set_response = gb.get(f"{path}?cmd=set&key=messages&value=TestEntry")
        assert set_response.content == b'{"message": "Updated"}'
        assert gb.get(f"{path}?cmd=get&key=messages&value=").content == b'{"data": "TestEntry"}'


def test_set_appends_only_the_last_entry_and_never_rewrites(gb: httpx.Client, token: str) -> None:
    gb.get("/guestbook.php", params={"cmd": "set", "key": "messages", "value": f"{token} a"})
    # The old page sends the whole list, with the new entry last; nothing is rewritten.
    gb.get(
        "/guestbook.php",
        params={"cmd": "set", "key": "messages", "value": f"forged,entries,{token} b"},
    )
    data = gb.get("/guestbook.php", params={"cmd": "get"}).json()["data"]
    assert data.endswith(f"{token} a,{token} b")
    assert "forged" not in data


def test_gke_key_name_and_absent_key_are_accepted(gb: httpx.Client, token: str) -> None:
    r = gb.get("/guestbook.php", params={"cmd": "set", "key": "guestbook", "value": token})
    assert r.json() == {"message": "Updated"}
    assert gb.get("/guestbook", params={"cmd": "get"}).json()["data"].endswith(token)


@pytest.mark.parametrize(
    "params",
    [
        {"cmd": "delete", "key": "messages"},
        {"key": "messages"},
        {"cmd": "get", "key": "other"},
        {"cmd": "set", "key": "messages"},
        {"cmd": "set", "key": "messages", "value": "a,b,   "},
        {"cmd": "set", "key": "messages", "value": ""},
    ],
)
def test_bad_legacy_requests_are_400_as_json_error(
    gb: httpx.Client, params: dict[str, str]
) -> None:
    count = gb.get("/api/status").json()["message_count"]
    response = gb.get("/guestbook.php", params=params)
    assert response.status_code == 400
    assert list(response.json()) == ["error"]
    assert gb.get("/api/status").json()["message_count"] == count


def test_legacy_set_of_forbidden_characters_is_422(gb: httpx.Client) -> None:
    response = gb.get("/guestbook.php", params={"cmd": "set", "value": "x\x07y"})
    assert response.status_code == 422
    assert "error" in response.json()


@pytest.mark.parametrize(
    "text", ['she said "hi"', "& # + % \\ / ?", "emoji 🎉 and 日本語", "<b>bold</b>"]
)
def test_legacy_set_round_trips_tricky_text(gb: httpx.Client, token: str, text: str) -> None:
    full = f"{token} {text}"
    response = gb.get("/guestbook.php", params={"cmd": "set", "key": "messages", "value": full})
    assert response.json() == {"message": "Updated"}
    assert gb.get("/guestbook.php", params={"cmd": "get"}).json()["data"].endswith(full)
    assert gb.get("/api/messages").json()["messages"][0]["text"] == full


def _stored_answer(cluster: Cluster) -> bytes:
    """What `get` must answer: the newest LEGACY_LIMIT texts on the leader, oldest first."""
    entries = cluster.leader.client().xrevrange("guestbook:messages", count=LEGACY_LIMIT)
    texts = [fields["t"] for _, fields in reversed(entries)]
    return json.dumps({"data": ",".join(texts)}).encode()


async def _caught_up(cluster: Cluster, state: AppState, newest: str, removed: list[str]) -> None:
    await asyncio.to_thread(lambda: [f.wait_synced() for f in cluster.followers])
    deadline = asyncio.get_running_loop().time() + 20
    while not (
        state.feed.live
        and state.feed.head_id == newest
        and all(state.feed.is_removed(i) for i in removed)
    ):
        assert asyncio.get_running_loop().time() < deadline, "the feed did not catch up"
        await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_get_from_memory_equals_the_store_after_posts_and_removals(cluster: Cluster) -> None:
    pipe = cluster.leader.client().pipeline(transaction=False)
    for i in range(LEGACY_LIMIT + 150):
        pipe.xadd("guestbook:messages", {"t": f"old {i}"})
    ids = [str(i) for i in pipe.execute()]
    env = {
        "GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url,
        "GUESTBOOK_REDIS_FOLLOWER_URL": cluster.follower_urls(),
        "GUESTBOOK_RATE_LIMIT": "0",
    }
    async with app_in_process(env) as (app, client):
        state: AppState = app.state.guestbook
        await _caught_up(cluster, state, ids[-1], [])
        first = (await legacy_list(state)).body
        # Built once per change of the feed: the same bytes for every reader until then.
        assert (await legacy_list(state)).body is first
        assert (await client.get("/guestbook.php", params={"cmd": "get"})).content == first
        assert first == _stored_answer(cluster)

        truth = MessageStore(cluster.leader.url, (), timeout=5)
        try:
            removed = [ids[-1], ids[-500], ids[-LEGACY_LIMIT]]
            for message_id in removed:
                assert await moderation.remove(truth, message_id, by="tests") is not None
        finally:
            await truth.close()
        answer = await client.get("/guestbook.php", params={"cmd": "set", "value": "a,new one"})
        assert answer.json() == {"message": "Updated"}
        newest = cluster.leader.client().xrevrange("guestbook:messages", count=1)[0][0]
        await _caught_up(cluster, state, newest, removed)

        after = (await legacy_list(state)).body
        assert after is not first
        assert after == _stored_answer(cluster)
        assert after.endswith(b',new one"}')
        assert (await client.get("/guestbook", params={"cmd": "get"})).content == after
