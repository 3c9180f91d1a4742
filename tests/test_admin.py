"""The moderators' page in process against real servers: signing in (an HttpOnly, SameSite=Strict,
expiring cookie for /admin only; a wrong token is 401 and no cookie), the forms that remove,
approve and reject (audited as the moderator), the three locks on every form post (session, CSRF
token, Origin), 403 with no token configured, and a token that never shows up in an answer."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from starlette.responses import Response

from conftest import Cluster, app_in_process
from guestbook import auth
from guestbook.settings import Settings

pytestmark = pytest.mark.anyio

TOKEN = "moderators-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
HERE = "http://guestbook.test"  # the in-process client's origin


def env_for(cluster: Cluster, **extra: str) -> dict[str, str]:
    return {
        "GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url,
        "GUESTBOOK_RATE_LIMIT": "0",
        "GUESTBOOK_ADMIN_TOKEN": TOKEN,
        **extra,
    }


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with app_in_process(env_for(cluster)) as (_, client):
        yield client


async def sign_in(client: httpx.AsyncClient) -> str:
    """Sign in through the form; the page's CSRF token."""
    signed_in = await client.post("/admin/session", data={"token": TOKEN}, headers=HTML)
    assert signed_in.status_code == 303
    return csrf_of((await client.get("/admin", headers=HTML)).text)


def csrf_of(page: str) -> str:
    tokens = set(re.findall(r'name="csrf" value="([^"]*)"', page))
    assert len(tokens) == 1, tokens
    return tokens.pop()


async def post_message(client: httpx.AsyncClient, text: str) -> dict[str, str]:
    response = await client.post("/api/messages", json={"text": text})
    assert response.status_code in (201, 202), response.text
    body: dict[str, str] = response.json()
    return body


async def public_texts(client: httpx.AsyncClient) -> list[str]:
    return [m["text"] for m in (await client.get("/api/messages")).json()["messages"]]


async def public_texts_once_settled(
    client: httpx.AsyncClient, expected: list[str], within: float = 2.0
) -> list[str]:
    """The public page's texts once they are `expected`, or as they stand after `within`
    seconds: the first page is served from the feed's memory, which learns of a removal by
    reading the store's removal records, a moment after the removal itself."""
    deadline = time.monotonic() + within
    while (texts := await public_texts(client)) != expected and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    return texts


async def audit(client: httpx.AsyncClient) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = (
        await client.get("/api/moderation/audit", headers=AUTH)
    ).json()["entries"]
    return entries


def other_session(settings: Settings) -> tuple[str, str]:
    """Another moderator's session, started a minute ago: its cookie and its CSRF token."""
    response = Response()
    auth.start_session(response, settings, now=time.time() - 60)
    cookie = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    return cookie, auth.csrf_token(settings, cookie.split(".", 1)[0])


# --- signing in ------------------------------------------------------------------------------


async def test_without_a_session_the_page_is_the_sign_in_form(
    client: httpx.AsyncClient,
) -> None:
    await post_message(client, "not for strangers")

    page = await client.get("/admin", headers=HTML)

    assert page.status_code == 200
    assert 'action="/admin/session"' in page.text
    assert 'type="password"' in page.text
    assert "not for strangers" not in page.text
    assert page.headers["cache-control"] == "no-store"


async def test_signing_in_sets_an_http_only_strict_expiring_cookie_for_admin_only(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/admin/session", data={"token": TOKEN}, headers=HTML)

    assert response.status_code == 303
    assert response.headers["location"] == "/admin?done=signed-in"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{auth.SESSION_COOKIE}=")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/admin"} <= attributes
    assert f"max-age={auth.SESSION_SECONDS}" in attributes
    page = await client.get(response.headers["location"], headers=HTML)
    assert "Signed in." in page.text
    assert 'action="/admin/session/end"' in page.text


@pytest.mark.parametrize("offered", ["wrong-token-0123456789", f"{TOKEN}x", ""])
async def test_a_wrong_token_is_401_with_the_form_again_and_no_cookie(
    client: httpx.AsyncClient, offered: str
) -> None:
    response = await client.post("/admin/session", data={"token": offered}, headers=HTML)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "set-cookie" not in response.headers
    assert "That is not the moderators&#39; token." in response.text
    assert 'action="/admin/session"' in response.text
    if offered:
        assert offered not in response.text
    assert not client.cookies


async def test_an_expired_session_is_the_sign_in_form_again(cluster: Cluster) -> None:
    async with app_in_process(env_for(cluster)) as (app, client):
        response = Response()
        settings = app.state.guestbook.settings
        auth.start_session(response, settings, now=time.time() - auth.SESSION_SECONDS - 5)
        value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        client.cookies.set(auth.SESSION_COOKIE, value)

        page = await client.get("/admin", headers=HTML)

    assert 'action="/admin/session"' in page.text
    assert "csrf" not in page.text


async def test_signing_out_ends_the_session(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client)

    response = await client.post("/admin/session/end", data={"csrf": csrf}, headers=HTML)

    assert response.status_code == 303
    assert response.headers["location"] == "/admin?done=signed-out"
    assert 'gb_admin=""' in response.headers["set-cookie"]
    assert "Max-Age=0" in response.headers["set-cookie"]
    page = await client.get(response.headers["location"], headers=HTML)
    assert "Signed out." in page.text
    assert 'action="/admin/session"' in page.text


# --- moderating through the forms ----------------------------------------------------------


async def test_the_page_shows_the_newest_messages_the_queue_and_the_audit(
    cluster: Cluster,
) -> None:
    env = env_for(cluster, GUESTBOOK_MAX_LINKS="0")
    async with app_in_process(env) as (_, client):
        shown = await post_message(client, "an ordinary <b>message</b>")
        held = await post_message(client, "buy at http://spam.example")
        csrf = await sign_in(client)

        page = (await client.get("/admin", headers=HTML)).text

    assert f'<li data-id="{shown["id"]}">' in page
    assert "an ordinary &lt;b&gt;message&lt;/b&gt;" in page
    assert f'<li data-held="{held["id"]}">' in page
    assert '<strong class="why">links</strong>' in page
    assert '<li data-action="hold"' in page
    # Every form carries this session's CSRF token; each action posts where it should.
    assert page.count(f'name="csrf" value="{csrf}"') == page.count("<form")
    for action in ("remove", "approve", "reject", "session/end"):
        assert f'action="/admin/{action}"' in page


async def test_removing_through_the_form_removes_it_everywhere_and_is_audited(
    client: httpx.AsyncClient,
) -> None:
    kept = await post_message(client, "kept")
    spam = await post_message(client, "rude words")
    csrf = await sign_in(client)

    response = await client.post(
        "/admin/remove",
        data={"csrf": csrf, "id": spam["id"], "reason": "rude"},
        headers={**HTML, "Origin": HERE},
    )

    assert response.status_code == 303
    assert response.headers["location"] == f"/admin?done=removed&id={spam['id']}"
    page = (await client.get(response.headers["location"], headers=HTML)).text
    assert f"Removed message {spam['id']}." in page
    assert f'<li data-id="{spam["id"]}">' not in page
    assert f'<li data-id="{kept["id"]}">' in page
    assert await public_texts_once_settled(client, ["kept"]) == ["kept"]
    [entry] = await audit(client)
    assert {k: entry[k] for k in ("action", "id", "by", "reason", "text")} == {
        "action": "remove",
        "id": spam["id"],
        "by": "moderator",
        "reason": "rude",
        "text": "rude words",
    }
    again = await client.post("/admin/remove", data={"csrf": csrf, "id": spam["id"]})
    assert again.headers["location"] == f"/admin?done=missing&id={spam['id']}"


async def test_approving_and_rejecting_through_the_forms_work_the_queue_and_are_audited(
    cluster: Cluster,
) -> None:
    async with app_in_process(env_for(cluster, GUESTBOOK_MODERATION="pre")) as (_, client):
        first = await post_message(client, "first")
        second = await post_message(client, "second")
        csrf = await sign_in(client)
        assert await public_texts(client) == []

        approved = await client.post("/admin/approve", data={"csrf": csrf, "id": first["id"]})
        rejected = await client.post(
            "/admin/reject", data={"csrf": csrf, "id": second["id"], "reason": "off topic"}
        )

        assert approved.status_code == rejected.status_code == 303
        [published] = (await client.get("/api/messages")).json()["messages"]
        assert published["text"] == "first"
        assert approved.headers["location"] == f"/admin?done=approved&id={published['id']}"
        assert rejected.headers["location"] == f"/admin?done=rejected&id={second['id']}"
        page = (await client.get(rejected.headers["location"], headers=HTML)).text
        assert f"Rejected held post {second['id']}." in page
        assert "No posts are waiting for a moderator." in page
        assert f'<li data-id="{published["id"]}">' in page
        entries = await audit(client)
        assert [(e["action"], e["id"], e["by"], e["reason"]) for e in entries[:2]] == [
            ("reject", second["id"], "moderator", "off topic"),
            ("approve", first["id"], "moderator", "pre-moderation"),
        ]
        twice = await client.post("/admin/approve", data={"csrf": csrf, "id": first["id"]})
        assert twice.headers["location"] == f"/admin?done=decided&id={first['id']}"


async def test_an_over_long_reason_is_refused_and_nothing_is_removed(
    client: httpx.AsyncClient,
) -> None:
    message = await post_message(client, "stays")
    csrf = await sign_in(client)

    response = await client.post(
        "/admin/remove",
        data={"csrf": csrf, "id": message["id"], "reason": "x" * 501},
        headers=HTML,
    )

    assert response.status_code == 422
    assert await public_texts(client) == ["stays"]


# --- the three locks -----------------------------------------------------------------------

FORMS = ["/admin/remove", "/admin/approve", "/admin/reject", "/admin/session/end"]


@pytest.mark.parametrize("path", FORMS)
async def test_a_post_without_a_session_is_sent_to_sign_in_and_changes_nothing(
    client: httpx.AsyncClient, path: str
) -> None:
    message = await post_message(client, "stays")

    response = await client.post(path, data={"id": message["id"]}, headers=HTML)

    assert response.status_code == 303
    assert response.headers["location"] == "/admin?done=expired"
    assert await public_texts(client) == ["stays"]
    assert await audit(client) == []


async def test_a_post_without_the_csrf_token_or_with_another_sessions_is_403(
    cluster: Cluster,
) -> None:
    async with app_in_process(env_for(cluster)) as (app, client):
        message = await post_message(client, "stays")
        await sign_in(client)
        _, others_csrf = other_session(app.state.guestbook.settings)

        answers = [
            await client.post("/admin/remove", data={"id": message["id"]}, headers=HTML),
            await client.post(
                "/admin/remove", data={"id": message["id"], "csrf": ""}, headers=HTML
            ),
            await client.post(
                "/admin/remove", data={"id": message["id"], "csrf": others_csrf}, headers=HTML
            ),
            await client.post("/admin/session/end", data={"csrf": others_csrf}, headers=HTML),
        ]

        assert [a.status_code for a in answers] == [403, 403, 403, 403]
        assert "did not come from this page" in answers[0].text
        assert answers[0].headers["content-type"].startswith("text/html")
        assert all("set-cookie" not in a.headers for a in answers)
        assert await public_texts(client) == ["stays"]
        assert await audit(client) == []


@pytest.mark.parametrize("origin", ["http://evil.example", "http://guestbook.test.evil", "null"])
async def test_a_cross_site_form_post_is_refused_and_changes_nothing(
    cluster: Cluster, origin: str
) -> None:
    async with app_in_process(env_for(cluster, GUESTBOOK_MODERATION="pre")) as (_, client):
        held = await post_message(client, "held")
        await post_message(client, "also held")
        csrf = await sign_in(client)
        cross_site = {**HTML, "Origin": origin}
        decision = {"csrf": csrf, "id": held["id"]}

        answers = [
            await client.post("/admin/approve", data=decision, headers=cross_site),
            await client.post("/admin/reject", data=decision, headers=cross_site),
            await client.post("/admin/session/end", data={"csrf": csrf}, headers=cross_site),
            await client.post("/admin/session", data={"token": TOKEN}, headers=cross_site),
        ]

        assert [a.status_code for a in answers] == [403, 403, 403, 403]
        assert "sent from another site" in answers[0].text
        assert all("set-cookie" not in a.headers for a in answers)
        queue = (await client.get("/api/moderation/queue", headers=AUTH)).json()["held"]
        assert [p["text"] for p in queue] == ["held", "also held"]
        assert [e["action"] for e in await audit(client)] == ["hold", "hold"]
        # The same form from this site goes through.
        same_site = {**HTML, "Origin": HERE}
        ok = await client.post(
            "/admin/approve", data={"csrf": csrf, "id": held["id"]}, headers=same_site
        )
        assert ok.status_code == 303


async def test_without_a_configured_token_the_page_is_403_and_points_to_the_command_line(
    cluster: Cluster,
) -> None:
    env = env_for(cluster)
    del env["GUESTBOOK_ADMIN_TOKEN"]
    async with app_in_process(env) as (_, client):
        message = await post_message(client, "stays")
        page = await client.get("/admin", headers=HTML)
        posts = [
            await client.post("/admin/session", data={"token": TOKEN}, headers=HTML),
            await client.post("/admin/remove", data={"id": message["id"]}, headers=HTML),
            await client.post("/admin/approve", data={"id": message["id"]}, headers=HTML),
        ]

        assert page.status_code == 403
        assert page.headers["content-type"].startswith("text/html")
        assert "Moderation over the web is off" in page.text
        assert "command line" in page.text
        assert [p.status_code for p in posts] == [403, 403, 403]
        assert all("set-cookie" not in p.headers for p in posts)
        assert await public_texts(client) == ["stays"]


# --- the page itself -----------------------------------------------------------------------


async def test_admin_pages_keep_the_csp_with_nothing_inline_and_are_never_cached(
    client: httpx.AsyncClient,
) -> None:
    await post_message(client, "a message")
    sign_in_page = await client.get("/admin", headers=HTML)
    await sign_in(client)
    page = await client.get("/admin", headers=HTML)

    for answer in (sign_in_page, page):
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["cache-control"] == "no-store"
        assert "<script" not in answer.text
        assert "<style" not in answer.text
        assert not re.search(r"\s(style|on[a-z]+)=", answer.text)
        for url in re.findall(r'href="(/static/[^"]+)"', answer.text):
            assert (await client.get(url)).status_code == 200


async def test_the_token_never_appears_in_any_answer_or_log(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with app_in_process(env_for(cluster, GUESTBOOK_MODERATION="pre")) as (_, client):
        held = await post_message(client, "held")
        answers = [
            await client.get("/admin", headers=HTML),
            await client.post("/admin/session", data={"token": f"{TOKEN}x"}, headers=HTML),
            await client.post(
                "/admin/session", data={"token": TOKEN}, headers={**HTML, "Origin": "null"}
            ),
            await client.post("/admin/session", data={"token": TOKEN}, headers=HTML),
        ]
        csrf = csrf_of((await client.get("/admin", headers=HTML)).text)
        answers += [
            await client.get("/admin", headers=HTML),
            await client.post("/admin/approve", data={"csrf": "x", "id": held["id"]}),
            await client.post("/admin/approve", data={"csrf": csrf, "id": held["id"]}),
            await client.get("/admin?done=approved", headers=HTML),
            await client.post("/admin/session/end", data={"csrf": csrf}),
        ]

    assert [a.status_code for a in answers] == [200, 401, 403, 303, 200, 403, 303, 200, 303]
    for answer in answers:
        assert TOKEN not in answer.text
        assert TOKEN not in str(answer.headers)
    assert TOKEN not in caplog.text
