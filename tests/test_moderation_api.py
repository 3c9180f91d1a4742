"""The moderators' API in process against real servers: the bearer token (403 with none
configured, 401 with a challenge when missing or wrong), removal, the queue, the audit, and a
token that never shows up anywhere."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import Cluster, app_in_process

pytestmark = pytest.mark.anyio

TOKEN = "moderators-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def env_for(cluster: Cluster, **extra: str) -> dict[str, str]:
    return {
        "GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url,
        "GUESTBOOK_RATE_LIMIT": "0",
        **extra,
    }


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with app_in_process(env_for(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN)) as (_, client):
        yield client


ROUTES = [
    ("DELETE", "/api/messages/1-0"),
    ("GET", "/api/moderation/queue"),
    ("POST", "/api/moderation/queue/1-0/approve"),
    ("POST", "/api/moderation/queue/1-0/reject"),
    ("GET", "/api/moderation/audit"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_a_configured_token_moderation_over_http_is_forbidden(
    cluster: Cluster, method: str, path: str
) -> None:
    async with app_in_process(env_for(cluster)) as (_, client):
        response = await client.request(method, path, headers=AUTH)
    assert response.status_code == 403
    assert "command line" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("auth", [{}, {"Authorization": "Bearer wrong-token-0123456789"}])
async def test_a_missing_or_wrong_token_is_401_with_a_bearer_challenge(
    client: httpx.AsyncClient, method: str, path: str, auth: dict[str, str]
) -> None:
    response = await client.request(method, path, headers=auth)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_removed_message_is_gone_and_audited_with_its_text(
    client: httpx.AsyncClient, cluster: Cluster
) -> None:
    kept = (await client.post("/api/messages", json={"text": "kept"})).json()
    spam = (await client.post("/api/messages", json={"text": "rude words"})).json()
    removed = await client.request(
        "DELETE", f"/api/messages/{spam['id']}", headers=AUTH, json={"reason": "rude"}
    )
    assert removed.status_code == 204
    assert [m["id"] for m in (await client.get("/api/messages")).json()["messages"]] == [kept["id"]]
    again = await client.request("DELETE", f"/api/messages/{spam['id']}", headers=AUTH)
    assert again.status_code == 404
    malformed = await client.request("DELETE", "/api/messages/yesterday", headers=AUTH)
    assert malformed.status_code == 400
    [entry] = (await client.get("/api/moderation/audit", headers=AUTH)).json()["entries"]
    assert {k: entry[k] for k in ("action", "id", "by", "reason", "text")} == {
        "action": "remove",
        "id": spam["id"],
        "by": "moderator",
        "reason": "rude",
        "text": "rude words",
    }


async def test_the_queue_is_worked_by_approve_and_reject(cluster: Cluster) -> None:
    env = env_for(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN, GUESTBOOK_MODERATION="pre")
    async with app_in_process(env) as (_, client):
        first = (await client.post("/api/messages", json={"text": "first"})).json()
        second = (await client.post("/api/messages", json={"text": "second"})).json()
        queue = (await client.get("/api/moderation/queue", headers=AUTH)).json()["held"]
        assert [(p["id"], p["reason"]) for p in queue] == [
            (first["id"], "pre-moderation"),
            (second["id"], "pre-moderation"),
        ]
        approved = await client.post(f"/api/moderation/queue/{first['id']}/approve", headers=AUTH)
        assert approved.status_code == 200
        assert approved.json()["text"] == "first"
        rejected = await client.post(
            f"/api/moderation/queue/{second['id']}/reject", headers=AUTH, json={"reason": "no"}
        )
        assert rejected.status_code == 204
        assert (await client.get("/api/moderation/queue", headers=AUTH)).json() == {"held": []}
        page = (await client.get("/api/messages")).json()["messages"]
        assert [m["text"] for m in page] == ["first"]
        actions = [
            e["action"]
            for e in (await client.get("/api/moderation/audit", headers=AUTH)).json()["entries"]
        ]
        assert actions == ["reject", "approve", "hold", "hold"]
        twice = await client.post(f"/api/moderation/queue/{first['id']}/approve", headers=AUTH)
        assert twice.status_code == 404


async def test_the_token_never_appears_in_logs_status_metrics_or_errors(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [
        await client.get("/api/moderation/queue", headers=AUTH),
        await client.get("/api/moderation/queue", headers={"Authorization": f"Bearer {TOKEN}x"}),
        await client.get("/api/status"),
        await client.get("/metrics"),
        await client.get("/openapi.json"),
    ]
    for answer in answers:
        assert TOKEN not in answer.text
        assert TOKEN not in str(answer.headers)
    assert TOKEN not in caplog.text
