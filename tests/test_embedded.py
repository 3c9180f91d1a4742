"""The embedded default: `guestbook serve` with no store configured."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Frontend, base_env, wait_until
from guestbook.embedded import ADDRESS_FILE, running_url


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


# --- supervision: the embedded store restarted when it dies, serve ended when it cannot -----

# The contract's bound for a restart; the tests measure from the kill, so the figure includes
# the time to notice the death, start the server and have the app's clients reconnect.
RESTART_BOUND = 5.0


def address(tmp_path: Path) -> dict[str, object]:
    return dict(json.loads((tmp_path / "data" / ADDRESS_FILE).read_text()))


def zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False  # reaped
    return state == "Z"


def is_store(pid: int) -> bool:
    try:
        return b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def restarted(tmp_path: Path, old_pid: int) -> int:
    """The new store's pid, once server.json names one that runs."""
    new_pid = int(str(address(tmp_path)["pid"]))
    assert new_pid != old_pid
    assert alive(new_pid)
    assert is_store(new_pid)
    return new_pid


def ready(frontend: Frontend) -> bool:
    return httpx.get(f"{frontend.url}/readyz", timeout=1).status_code == 200


def test_a_killed_embedded_store_is_restarted_on_the_same_data(tmp_path: Path) -> None:
    frontend = embedded_frontend(tmp_path).start()
    with frontend.http() as gb:
        for text in ("before the crash", "also before"):
            assert gb.post("/api/messages", json={"text": text}).status_code == 201
        before = address(tmp_path)
        old_pid = int(str(before["pid"]))

        killed = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        seen: list[int] = []

        def ready_again() -> bool:
            seen.append(gb.get("/readyz", timeout=1).status_code)
            restarted(tmp_path, old_pid)
            # An older page is read from the store itself, not from the frontend's memory.
            older = gb.get("/api/messages", params={"before": "99999999999999-0"}, timeout=1)
            return seen[-1] == 200 and older.status_code == 200

        wait_until(ready_again, timeout=RESTART_BOUND, interval=0.005)
        took = time.monotonic() - killed
        # Not asserted: how long /readyz said 503 depends on when the next look came.
        print(f"ready again {took:.3f} s after SIGKILL; /readyz 503 {seen.count(503)} times")

        after = address(tmp_path)
        assert after["url"] == before["url"]  # same socket, so every client finds it again
        assert after["owner_pid"] == before["owner_pid"]
        assert not zombie(old_pid), "the killed store was never reaped"
        assert [m["text"] for m in gb.get("/api/messages").json()["messages"]] == [
            "also before",
            "before the crash",
        ]
        assert gb.post("/api/messages", json={"text": "after the crash"}).status_code == 201
    status = run_cli(tmp_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["message_count"] == 3
    assert "embedded store restarted" in frontend.logs()
    assert frontend.stop() == 0
    assert not alive(int(str(after["pid"])))


def test_readiness_is_503_while_the_embedded_store_is_down_and_200_once_it_is_back(
    tmp_path: Path,
) -> None:
    frontend = embedded_frontend(tmp_path).start()
    data_dir = tmp_path / "data"
    # Each /readyz answer, and whether the store was down for the whole call: it did not answer
    # a PING just before the request nor just after the response.
    looks: list[tuple[bool, int]] = []
    stop = threading.Event()

    def watch() -> None:
        # Asking all along, not only after the kill: the moment that matters is the one right
        # after it, before the frontend's own reader has noticed.
        with frontend.http() as gb:
            while not stop.is_set():
                down_before = running_url(data_dir) is None
                code = gb.get("/readyz", timeout=10).status_code
                looks.append((down_before and running_url(data_dir) is None, code))

    def more_looks(than: int) -> bool:
        return len(looks) > than

    watcher = threading.Thread(target=watch, name="readyz-watcher")
    watcher.start()
    try:
        wait_until(functools.partial(more_looks, 10))
        # Three restarts (within MAX_RESTARTS): each gap lasts only until the supervisor's
        # next look and the new server's start, so one of them could pass between two looks.
        for _ in range(3):
            pid = store_pid(tmp_path)
            os.kill(pid, signal.SIGKILL)
            wait_until(functools.partial(restarted, tmp_path, pid), timeout=RESTART_BOUND)
            wait_until(functools.partial(ready, frontend), timeout=RESTART_BOUND)
            wait_until(functools.partial(more_looks, len(looks) + 5))
    finally:
        stop.set()
        watcher.join(30)

    while_down = [code for down, code in looks if down]
    print(f"/readyz answered {len(while_down)} times while the store was down (3 restarts)")
    assert while_down, "no /readyz answer fell inside a restart gap"
    assert set(while_down) == {503}
    assert looks[-1] == (False, 200)
    assert "embedded store restarted" in frontend.logs()


def test_readiness_stays_200_through_one_slow_answer_of_a_store_that_is_there(
    tmp_path: Path,
) -> None:
    # A store timeout of 5 s keeps the frontend's reader live for seconds through the hang, so
    # the one slow ping is all that readiness sees: it must not turn 503 for it.
    env = base_env(tmp_path, GUESTBOOK_STORE_TIMEOUT="5")
    frontend = Frontend(env, log_path=tmp_path / "serve.log")
    _started.append(frontend)
    frontend.start()
    pid = store_pid(tmp_path)
    with frontend.http() as gb:
        os.kill(pid, signal.SIGSTOP)
        try:
            asked = time.monotonic()
            answer = gb.get("/readyz", timeout=10)
            took = time.monotonic() - asked
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"/readyz answered {answer.status_code} in {took:.2f} s with the store stopped")
        assert answer.status_code == 200
        assert answer.text == "ready\n"
        wait_until(functools.partial(ready, frontend))
        assert gb.post("/api/messages", json={"text": "after the pause"}).status_code == 201


def test_an_embedded_store_that_keeps_dying_ends_serve_with_an_error(tmp_path: Path) -> None:
    frontend = embedded_frontend(tmp_path).start()
    assert frontend.process is not None
    pid = store_pid(tmp_path)
    for _ in range(5):
        os.kill(pid, signal.SIGKILL)
        wait_until(functools.partial(restarted, tmp_path, pid), timeout=RESTART_BOUND)
        wait_until(functools.partial(ready, frontend), timeout=RESTART_BOUND)
        pid = store_pid(tmp_path)
    os.kill(pid, signal.SIGKILL)
    code = frontend.process.wait(30)
    assert code != 0
    logs = frontend.logs()
    assert "the embedded store died 6 times within 60 s" in logs
    assert "guestbook: the embedded store died 6 times" in logs  # the line on stderr
    assert not zombie(pid)
    assert not (tmp_path / "data" / ADDRESS_FILE).exists()


def test_an_embedded_store_whose_data_cannot_be_loaded_ends_serve_with_an_error(
    tmp_path: Path,
) -> None:
    frontend = embedded_frontend(tmp_path).start()
    assert frontend.process is not None
    pid = store_pid(tmp_path)
    # Stopped, serve cannot restart the store before its data is made unreadable.
    frontend.process.send_signal(signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGKILL)
        manifest = next((tmp_path / "data" / "appendonlydir").glob("*.manifest"))
        manifest.write_text("not a manifest\n")
    finally:
        frontend.process.send_signal(signal.SIGCONT)
    code = frontend.process.wait(30)
    assert code != 0
    logs = frontend.logs()
    assert "times within 60 s (exit code 1 last); not restarting it again" in logs
    assert "valkey.log" in logs  # where to look
    assert not (tmp_path / "data" / ADDRESS_FILE).exists()


def test_commands_report_a_dead_store_as_unreachable_while_serve_holds_the_data_dir(
    tmp_path: Path,
) -> None:
    frontend = embedded_frontend(tmp_path).start()
    assert frontend.process is not None
    with frontend.http() as gb:
        assert gb.post("/api/messages", json={"text": "kept"}).status_code == 201
    # Stopped, serve still holds the data dir but cannot restart the store it ran.
    frontend.process.send_signal(signal.SIGSTOP)
    try:
        os.kill(store_pid(tmp_path), signal.SIGKILL)
        status = run_cli(tmp_path, "status")
        posted = run_cli(tmp_path, "post", "while the store is dead")
        listed = run_cli(tmp_path, "list")
    finally:
        frontend.process.send_signal(signal.SIGCONT)

    assert status.returncode == 1
    assert "store:     embedded" in status.stdout
    assert "UNREACHABLE" in status.stdout
    for result in (status, posted, listed):
        assert "another guestbook" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    for result in (posted, listed):
        assert result.returncode == 1
        assert "the store is unreachable" in result.stderr
    # Once serve runs again it restarts the store and the commands work.
    wait_until(lambda: httpx.get(f"{frontend.url}/readyz").status_code == 200, timeout=10)
    listed = run_cli(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert "kept" in listed.stdout
    assert "while the store is dead" not in listed.stdout
