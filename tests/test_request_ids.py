"""A request id in every log line and in the answer: taken from X-Request-ID when it looks
like one, else made, so an operator can follow a request across frontends."""

from __future__ import annotations

import json

from conftest import Cluster, MakeFrontend, wait_until


def access_lines(logs: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "guestbook.access"]


def test_each_answer_and_its_log_line_carry_the_same_request_id(
    cluster: Cluster, make_frontend: MakeFrontend
) -> None:
    frontend = make_frontend(cluster)
    with frontend.http() as gb:
        made = gb.get("/api/messages").headers["x-request-id"]
        kept = gb.get("/healthz", headers={"X-Request-ID": "lb-7f3a.42"}).headers["x-request-id"]
        replaced = gb.get("/healthz", headers={"X-Request-ID": 'x" inject'}).headers["x-request-id"]
        missing = gb.get("/no/such/page").headers["x-request-id"]
    assert len(made) == 16
    assert kept == "lb-7f3a.42"
    assert replaced != 'x" inject'
    assert len(replaced) == 16

    def logged() -> set[object]:
        return {line.get("request_id") for line in access_lines(frontend.logs())}

    wait_until(lambda: {made, kept, replaced, missing} <= logged())
