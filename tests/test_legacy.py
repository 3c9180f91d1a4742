"""The original PHP frontend's API, byte for byte."""

from __future__ import annotations

import httpx
import pytest

from conftest import Cluster, MakeFrontend


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
