"""The Atom feed in process against real servers: it parses as RFC 4287 with a real XML
parser, carries every text exactly, keeps its ids, and answers If-None-Match with 304."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import Cluster, app_in_process
from guestbook.app import GuestbookApp

pytestmark = pytest.mark.anyio
NS = {"a": "http://www.w3.org/2005/Atom"}
TRICKY = "Fish & chips < 3 > 2 \"quoted\" 'single' ]]> <b>bold</b> 🎉\nsecond line\ttab"


@pytest.fixture
async def app(cluster: Cluster) -> AsyncIterator[tuple[GuestbookApp, httpx.AsyncClient]]:
    env = {"GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url, "GUESTBOOK_RATE_LIMIT": "0"}
    async with app_in_process(env) as pair:
        yield pair


async def settled(app: GuestbookApp, newest: str) -> None:
    for _ in range(500):
        if app.state.guestbook.feed.head_id == newest and app.state.guestbook.feed.live:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the feed did not catch up")


async def test_the_feed_parses_and_carries_every_text_exactly(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    gb, client = app
    older = (await client.post("/api/messages", json={"text": "first"})).json()
    newest = (await client.post("/api/messages", json={"text": TRICKY})).json()
    await settled(gb, newest["id"])
    response = await client.get("/feed.atom")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    feed = ET.fromstring(response.content)
    assert feed.tag == "{http://www.w3.org/2005/Atom}feed"
    assert feed.findtext("a:updated", namespaces=NS) == newest["created_at"]
    entries = feed.findall("a:entry", NS)
    assert [e.findtext("a:content", namespaces=NS) for e in entries] == [TRICKY, "first"]
    assert all(e.find("a:content", NS).get("type") == "text" for e in entries)  # type: ignore[union-attr]
    assert entries[1].findtext("a:updated", namespaces=NS) == older["created_at"]
    ids = [e.findtext("a:id", namespaces=NS) for e in entries]
    assert all(i and i.startswith("urn:uuid:") for i in ids)
    again = ET.fromstring((await client.get("/feed.atom?via=framework")).content)
    assert [e.findtext("a:id", namespaces=NS) for e in again.findall("a:entry", NS)] == ids


async def test_an_unchanged_feed_is_a_304_and_a_new_message_changes_its_etag(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    gb, client = app
    first = (await client.post("/api/messages", json={"text": "one"})).json()
    await settled(gb, first["id"])
    etag = (await client.get("/feed.atom")).headers["etag"]
    unchanged = await client.get("/feed.atom", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    second = (await client.post("/api/messages", json={"text": "two"})).json()
    await settled(gb, second["id"])
    changed = await client.get("/feed.atom", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag


async def test_an_empty_guestbook_is_a_valid_empty_feed(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    _, client = app
    feed = ET.fromstring((await client.get("/feed.atom")).content)
    assert feed.findall("a:entry", NS) == []
    assert feed.findtext("a:updated", namespaces=NS) == "1970-01-01T00:00:00.000Z"


async def test_the_page_advertises_the_feed(app: tuple[GuestbookApp, httpx.AsyncClient]) -> None:
    _, client = app
    page = (await client.get("/")).text
    assert (
        '<link rel="alternate" type="application/atom+xml" title="Guestbook" href="/feed.atom">'
        in page
    )
