"""The embedded default: `guestbook serve` with no store configured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Frontend, base_env, wait_until
from guestbook.embedded import ADDRESS_FILE


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


_started: list[Frontend] = []


@pytest.fixture(autouse=True)
def _stop_embedded_frontends() -> Iterator[None]:
    """Whatever a test asserted, no `guestbook serve` (nor its store) outlives it."""
    yield
    while _started:
        frontend = _started.pop()
        if frontend.process is not None and frontend.process.poll() is None:
            frontend.stop(signal.SIGKILL)


def embedded_frontend(tmp_path: Path, name: str = "serve") -> Frontend:
    frontend = Frontend(base_env(tmp_path), log_path=tmp_path / f"{name}.log")
    _started.append(frontend)
    return frontend


def store_pid(tmp_path: Path) -> int:
    return int(json.loads((tmp_path / "data" / ADDRESS_FILE).read_text())["pid"])


def test_messages_survive_a_restart(tmp_path: Path) -> None:
    frontend = embedded_frontend(tmp_path).start()
    with frontend.http() as gb:
        assert gb.get("/api/status").json()["mode"] == "embedded"
        assert gb.post("/api/messages", json={"text": "still here?"}).status_code == 201
    pid = store_pid(tmp_path)
    assert frontend.stop() == 0
    assert not alive(pid), "the embedded store outlived guestbook serve"
    assert not (tmp_path / "data" / ADDRESS_FILE).exists()

    again = embedded_frontend(tmp_path, "serve2").start()
    try:
        with again.http() as gb:
            assert [m["text"] for m in gb.get("/api/messages").json()["messages"]] == [
                "still here?"
            ]
    finally:
        again.stop()


def test_second_serve_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = embedded_frontend(tmp_path).start()
    try:
        second = run_cli(tmp_path, "serve", GUESTBOOK_PORT="0")
        assert second.returncode != 0
        assert "already runs the embedded store" in second.stderr
        assert str((tmp_path / "data").resolve()) in second.stderr
        with first.http() as gb:
            assert gb.get("/readyz").status_code == 200
    finally:
        first.stop()


def test_killed_serve_leaves_no_orphan_store(tmp_path: Path) -> None:
    frontend = embedded_frontend(tmp_path).start()
    pid = store_pid(tmp_path)
    frontend.stop(signal.SIGKILL)
    wait_until(lambda: not alive(pid), timeout=10)
    # The lock died with the process: a new serve starts on the same data dir.
    again = embedded_frontend(tmp_path, "serve2").start()
    again.stop()


def test_ctrl_c_stops_serve_and_store_cleanly(tmp_path: Path) -> None:
    frontend = embedded_frontend(tmp_path).start()
    pid = store_pid(tmp_path)
    assert frontend.stop(signal.SIGINT) == 0
    assert not alive(pid)


def run_cli(
    tmp_path: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guestbook", *args],
        env=base_env(tmp_path, **env),
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_cli_uses_the_running_server_for_the_data_dir(tmp_path: Path) -> None:
    frontend = embedded_frontend(tmp_path).start()
    try:
        result = run_cli(tmp_path, "post", "from the command line")
        assert result.returncode == 0, result.stderr
        with frontend.http() as gb:
            texts = [m["text"] for m in gb.get("/api/messages").json()["messages"]]
        assert texts == ["from the command line"]
    finally:
        frontend.stop()


def test_cli_starts_the_embedded_store_for_the_command_when_none_runs(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "post", "no server running").returncode == 0
    listed = run_cli(tmp_path, "list")
    assert listed.returncode == 0
    assert "no server running" in listed.stdout
    assert not (tmp_path / "data" / ADDRESS_FILE).exists()
    status = run_cli(tmp_path, "status", "--json")
    assert json.loads(status.stdout)["mode"] == "embedded"
    assert json.loads(status.stdout)["message_count"] == 1


@pytest.mark.parametrize("command", ["serve", "status", "post", "list", "export", "import"])
def test_every_command_explains_itself(tmp_path: Path, command: str) -> None:
    result = run_cli(tmp_path, command, "--help")
    assert result.returncode == 0
    assert "usage: guestbook" in result.stdout
    assert len(result.stdout) > 200


def test_data_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**base_env(tmp_path), "GUESTBOOK_DATA_DIR": str(blocker / "sub")}
    result = subprocess.run(
        [sys.executable, "-m", "guestbook", "list"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "GUESTBOOK_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_of_a_served_embedded_store(tmp_path: Path) -> None:
    frontend = embedded_frontend(tmp_path).start()
    try:
        assert httpx.get(f"{frontend.url}/readyz").status_code == 200
    finally:
        frontend.stop()


def test_serve_on_a_port_already_in_use_is_a_clear_error(tmp_path: Path) -> None:
    first = embedded_frontend(tmp_path).start()
    try:
        other = tmp_path / "other"
        result = run_cli(other, "serve", GUESTBOOK_PORT=str(first.port))
        assert result.returncode == 1
        assert f"cannot listen on 127.0.0.1:{first.port}" in result.stderr
        assert not (other / "data" / ADDRESS_FILE).exists()
    finally:
        first.stop()
