"""The topology page, `GET /status`, in process against a real leader and two followers: it
draws the leader, each follower with its lag, every frontend that is up with the one that served
it marked, says where writes and reads go, runs no inline script or style, and is linked from
the guestbook page's footer. With Redis Sentinel (three real sentinels, tests/sentinels.py) it
draws each sentinel too: whether it answers and whom it names leader."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import anyio
import httpx
import pytest

from conftest import Cluster, app_in_process, base_env
from sentinels import SENTINEL_PASSWORD, SERVICE, running_ha

pytestmark = pytest.mark.anyio

HTML = {"Accept": "text/html"}
INSTANCE = "frontend-under-test"


def env_for(cluster: Cluster) -> dict[str, str]:
    return {
        "GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url,
        "GUESTBOOK_REDIS_FOLLOWER_URL": cluster.follower_urls(),
        "GUESTBOOK_RATE_LIMIT": "0",
    }


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside each <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._open = tag if tag in ("script", "style") else None

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.inline.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def boxes(self, kind: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == "li" and kind in a.get("class", "").split()]


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    return parser


async def status_page(client: httpx.AsyncClient) -> Elements:
    response = await client.get("/status", headers=HTML)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    return parse(response.text)


async def test_the_page_draws_the_leader_the_followers_and_this_frontend_marked(
    cluster: Cluster,
) -> None:
    async with app_in_process(env_for(cluster), INSTANCE) as (_, client):
        status = (await client.get("/api/status")).json()
        page = await status_page(client)
        text = (await client.get("/status", headers=HTML)).text

    [leader] = page.boxes("leader")
    assert leader["data-url"] == status["leader"]["url"]
    followers = page.boxes("follower")
    assert [f["data-url"] for f in followers] == [f["url"] for f in status["followers"]]
    assert len(followers) == 2
    assert not any("down" in f["class"].split() for f in followers)
    assert "lag " in text
    frontends = page.boxes("frontend")
    assert INSTANCE in [f["data-name"] for f in frontends]
    assert [f["data-name"] for f in frontends if "served" in f["class"].split()] == [INSTANCE]
    assert "served this page" in text
    assert "writes go to the leader" in text
    assert "reads come from the followers" in text


async def test_every_frontend_up_is_listed_and_only_this_one_is_marked(cluster: Cluster) -> None:
    env = env_for(cluster)
    async with (
        app_in_process(env, "frontend-a") as (_, one),
        app_in_process(env, "frontend-b") as (_, two),
    ):
        # Each frontend's record reaches the follower this one reads a moment later.
        for _ in range(200):
            page = await status_page(two)
            if {"frontend-a", "frontend-b"} <= {f["data-name"] for f in page.boxes("frontend")}:
                break
            await anyio.sleep(0.05)
        assert (await one.get("/healthz")).status_code == 200

    frontends = page.boxes("frontend")
    assert {"frontend-a", "frontend-b"} <= {f["data-name"] for f in frontends}
    assert [f["data-name"] for f in frontends if "served" in f["class"].split()] == ["frontend-b"]


async def test_an_unreachable_follower_is_drawn_down(cluster: Cluster) -> None:
    async with app_in_process(env_for(cluster), INSTANCE) as (_, client):
        cluster.followers[0].kill()
        page = await status_page(client)

    first, second = page.boxes("follower")
    assert "down" in first["class"].split()
    assert "down" not in second["class"].split()
    assert "down" not in page.boxes("leader")[0]["class"].split()


async def test_the_page_runs_no_inline_script_or_style_and_loads_its_own_assets(
    cluster: Cluster,
) -> None:
    async with app_in_process(env_for(cluster), INSTANCE) as (_, client):
        page = await status_page(client)
        scripts = [a["src"] for t, a in page.tags if t == "script"]
        styles = [a["href"] for t, a in page.tags if t == "link" and a.get("rel") == "stylesheet"]
        for url in scripts + styles:
            assert (await client.get(url)).status_code == 200, url

    assert page.inline == []
    assert not [t for t, _ in page.tags if t == "style"]
    assert not [t for t, a in page.tags if "style" in a or any(k.startswith("on") for k in a)]
    assert any("status.js" in s for s in scripts)
    assert any("status.css" in s for s in styles)
    assert all(url.startswith("/") for url in scripts + styles)


async def test_the_guestbook_footer_links_to_the_status_page(cluster: Cluster) -> None:
    async with app_in_process(env_for(cluster), INSTANCE) as (_, client):
        page = (await client.get("/", headers=HTML)).text

    footer = page.split('<footer class="instance">', 1)[1].split("</footer>", 1)[0]
    assert f'<strong id="instance">{INSTANCE}</strong>' in footer
    assert '<a href="/status">How this guestbook runs</a>' in footer


async def test_a_follower_shows_its_byte_lag_and_when_it_last_heard_from_its_leader(
    cluster: Cluster,
) -> None:
    async with app_in_process(env_for(cluster), INSTANCE) as (_, client):
        text = (await client.get("/status", headers=HTML)).text

    # The seconds are master_last_io_seconds_ago: contact with the leader, not a time lag.
    assert len(re.findall(r"lag \d+ bytes · last heard \d+ s ago", text)) == 2
    assert not re.search(r"bytes · \d+ s<", text)


async def test_without_sentinels_the_page_draws_none(cluster: Cluster) -> None:
    async with app_in_process(env_for(cluster), INSTANCE) as (_, client):
        assert (await client.get("/api/status")).json()["sentinel"] is None
        text = (await client.get("/status", headers=HTML)).text

    assert parse(text).boxes("sentinel") == []
    assert 'id="sentinels"' not in text
    assert "Sentinel" not in text


async def test_with_sentinels_the_page_draws_each_one_whether_it_answers_and_whom_it_names(
    tmp_path: Path,
) -> None:
    with running_ha(tmp_path / "ha") as ha:
        env = base_env(tmp_path, **ha.env(GUESTBOOK_RATE_LIMIT="0"))
        async with app_in_process(env, INSTANCE) as (_, client):
            leader = f"127.0.0.1:{ha.leader().port}"
            page = await status_page(client)
            [leader_box] = page.boxes("leader")
            assert leader_box["data-url"].endswith(f"{leader}/0")
            sentinels = page.boxes("sentinel")
            assert [s["data-address"] for s in sentinels] == sorted(s.address for s in ha.sentinels)
            assert not any("down" in s["class"].split() for s in sentinels)
            text = (await client.get("/status", headers=HTML)).text
            assert f'Sentinels · service <span id="sentinel-service">{SERVICE}</span>' in text
            assert text.count(f"names {leader} leader") == 3

            ha.sentinels[1].kill()
            dead = ha.sentinels[1].address
            page = await status_page(client)
            text = (await client.get("/status", headers=HTML)).text

    drawn = {s["data-address"]: "down" in s["class"].split() for s in page.boxes("sentinel")}
    assert drawn == {s.address: s.address == dead for s in ha.sentinels}
    assert text.count(f"names {leader} leader") == 2
    assert "unreachable" in text
    assert SENTINEL_PASSWORD not in text
