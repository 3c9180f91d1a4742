"""The command line against a real leader and followers: post, list, status, export, import."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import redis

from conftest import Cluster, cli, free_port, start_cluster
from guestbook.cli import build_parser
from sentinels import SENTINEL_PASSWORD, SERVICE, running_ha


def stored(cluster: Cluster) -> list[tuple[str, dict[str, str]]]:
    return list(cluster.leader.client().xrange("guestbook:messages"))


def test_post_list_and_status(tmp_path: Path, cluster: Cluster) -> None:
    posted = cli(tmp_path, cluster, "post", "hello, from the CLI")
    assert posted.returncode == 0, posted.stderr
    message_id = posted.stdout.strip()
    listing = cli(tmp_path, cluster, "list")
    assert message_id in listing.stdout
    assert "hello, from the CLI" in listing.stdout
    status = json.loads(cli(tmp_path, cluster, "status", "--json").stdout)
    assert status["mode"] == "redis"
    assert status["message_count"] == 1
    assert [f["reachable"] for f in status["followers"]] == [True, True]
    text = cli(tmp_path, cluster, "status").stdout
    assert "messages:  1" in text
    assert "UNREACHABLE" not in text


def test_status_shows_an_unreachable_follower_and_exits_zero_while_readable(
    tmp_path: Path, cluster: Cluster
) -> None:
    cluster.followers[1].kill()
    result = cli(tmp_path, cluster, "status")
    assert result.returncode == 0
    assert "UNREACHABLE" in result.stdout


def test_status_never_shows_a_password(tmp_path: Path, cluster: Cluster) -> None:
    client = cluster.leader.client()
    client.config_set("requirepass", "s3cret-pw")
    try:
        url = f"redis://:s3cret-pw@127.0.0.1:{cluster.leader.port}/0"
        result = cli(
            tmp_path, cluster, "status", "--json",
            GUESTBOOK_REDIS_LEADER_URL=url, GUESTBOOK_REDIS_FOLLOWER_URL="",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "s3cret-pw" not in result.stdout
        assert json.loads(result.stdout)["leader"]["reachable"] is True
    finally:
        redis.Redis(port=cluster.leader.port, password="s3cret-pw").config_set("requirepass", "")


def test_post_rejects_bad_text_and_stores_nothing(tmp_path: Path, cluster: Cluster) -> None:
    result = cli(tmp_path, cluster, "post", "   ")
    assert result.returncode == 1
    assert "empty" in result.stderr
    assert "Traceback" not in result.stderr
    assert stored(cluster) == []


def test_export_import_round_trip_keeps_text_time_order_and_ids(
    tmp_path: Path, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for text in ["first", "second, with a comma", 'third "quoted" 🎉']:
        assert cli(tmp_path, cluster, "post", text).returncode == 0
    exported = cli(tmp_path, cluster, "export").stdout
    lines = [json.loads(line) for line in exported.splitlines()]
    assert [m["text"] for m in lines] == ["first", "second, with a comma", 'third "quoted" 🎉']

    target = start_cluster(tmp_path_factory.mktemp("target"), followers=0)
    try:
        dump = tmp_path / "export.jsonl"
        dump.write_text(exported)
        result = cli(tmp_path, target, "import", str(dump))
        assert result.returncode == 0, result.stderr
        assert "imported 3 new" in result.stdout
        again = cli(tmp_path, target, "import", str(dump))
        assert "imported 0 new" in again.stdout
        assert cli(tmp_path, target, "export").stdout == exported
    finally:
        target.stop()


def test_import_into_a_newer_guestbook_keeps_original_times(
    tmp_path: Path, cluster: Cluster
) -> None:
    old = [
        {"id": "1600000000000-0", "text": "from 2020", "created_at": "2020-09-13T12:26:40.000Z"},
        {
            "id": "1600000001000-0",
            "text": "a second later",
            "created_at": "2020-09-13T12:26:41.000Z",
        },
    ]
    assert cli(tmp_path, cluster, "post", "already here").returncode == 0
    dump = "\n".join(json.dumps(m) for m in old) + "\n"
    assert cli(tmp_path, cluster, "import", "-", stdin=dump).returncode == 0
    assert "imported 0 new" in cli(tmp_path, cluster, "import", "-", stdin=dump).stdout
    exported = [json.loads(line) for line in cli(tmp_path, cluster, "export").stdout.splitlines()]
    assert [m["text"] for m in exported] == ["already here", "from 2020", "a second later"]
    assert [m["created_at"] for m in exported[1:]] == [m["created_at"] for m in old]


def test_import_takes_the_php_guestbooks_comma_joined_value(
    tmp_path: Path, cluster: Cluster
) -> None:
    value = "Hello,,World, again ,last one"
    assert "imported 4 new" in cli(tmp_path, cluster, "import", "-", stdin=value).stdout
    assert "imported 0 new" in cli(tmp_path, cluster, "import", "-", stdin=value).stdout
    legacy = json.dumps({"data": value})
    assert "imported 0 new" in cli(tmp_path, cluster, "import", "-", stdin=legacy).stdout
    assert [f["t"] for _, f in stored(cluster)] == ["Hello", "World", "again", "last one"]


def test_import_of_an_invalid_file_imports_nothing(tmp_path: Path, cluster: Cluster) -> None:
    good = json.dumps({"id": "1-0", "text": "fine", "created_at": "1970-01-01T00:00:00.001Z"})
    bad = json.dumps({"id": "2-0", "text": "bell\u0007", "created_at": "1970-01-01T00:00:00.002Z"})
    result = cli(tmp_path, cluster, "import", "-", stdin=f"{good}\n{bad}\n")
    assert result.returncode == 1
    assert "line 2" in result.stderr
    assert stored(cluster) == []
    missing = cli(tmp_path, cluster, "import", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr


def test_flags_override_the_environment(tmp_path: Path, cluster: Cluster) -> None:
    result = cli(
        tmp_path, None, "post", "--redis-leader-url", cluster.leader.url, "via flag",
        GUESTBOOK_REDIS_LEADER_URL="redis://127.0.0.1:1/0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [f["t"] for _, f in stored(cluster)] == ["via flag"]


def test_unreachable_leader_is_a_clear_error(tmp_path: Path) -> None:
    result = cli(tmp_path, None, "post", "x", GUESTBOOK_REDIS_LEADER_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "read-only" in result.stderr or "leader" in result.stderr
    assert "Traceback" not in result.stderr


# --- export then import is the identity ------------------------------------------------------

OLD = [
    {"id": "1600000000000-0", "text": "from 2020", "created_at": "2020-09-13T12:26:40.000Z"},
    {"id": "1600000001000-0", "text": "a second later", "created_at": "2020-09-13T12:26:41.000Z"},
]


def guestbook_with_history(tmp_path: Path, cluster: Cluster) -> None:
    """Own posts (one of them multi-line), and old messages imported after them: those get
    new ids and keep their times beside them."""
    for text in ("already here", "two\nlines"):
        assert cli(tmp_path, cluster, "post", text).returncode == 0
    dump = "\n".join(json.dumps(m) for m in OLD) + "\n"
    assert "imported 2 new" in cli(tmp_path, cluster, "import", "-", stdin=dump).stdout


def test_an_export_imported_into_its_own_guestbook_adds_nothing(
    tmp_path: Path, cluster: Cluster
) -> None:
    guestbook_with_history(tmp_path, cluster)
    exported = cli(tmp_path, cluster, "export").stdout
    dump = tmp_path / "b.jsonl"
    dump.write_text(exported)

    result = cli(tmp_path, cluster, "import", str(dump))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported 0 new message(s), 4 already present"
    assert len(stored(cluster)) == 4
    assert cli(tmp_path, cluster, "export").stdout == exported


def test_an_entry_whose_id_is_taken_by_another_text_is_imported_with_a_new_id(
    tmp_path: Path, cluster: Cluster
) -> None:
    posted = cli(tmp_path, cluster, "post", "mine").stdout.strip()
    theirs = {"id": posted, "text": "theirs", "created_at": "2020-09-13T12:26:40.000Z"}
    result = cli(tmp_path, cluster, "import", "-", stdin=json.dumps(theirs) + "\n")
    assert "imported 1 new" in result.stdout
    exported = [json.loads(line) for line in cli(tmp_path, cluster, "export").stdout.splitlines()]
    assert [(m["text"], m["created_at"]) for m in exported][1:] == [
        ("theirs", "2020-09-13T12:26:40.000Z")
    ]
    assert exported[1]["id"] != posted


def test_an_export_chain_through_empty_guestbooks_keeps_every_time_and_id(
    tmp_path: Path, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    guestbook_with_history(tmp_path, cluster)
    first = cli(tmp_path, cluster, "export").stdout
    a = start_cluster(tmp_path_factory.mktemp("a"), followers=0)
    b = start_cluster(tmp_path_factory.mktemp("b"), followers=0)
    try:
        assert "imported 4 new" in cli(tmp_path, a, "import", "-", stdin=first).stdout
        second = cli(tmp_path, a, "export").stdout
        assert "imported 4 new" in cli(tmp_path, b, "import", "-", stdin=second).stdout
        third = cli(tmp_path, b, "export").stdout
    finally:
        a.stop()
        b.stop()
    assert second == first
    assert third == first
    times = [json.loads(line)["created_at"] for line in third.splitlines()]
    assert times[2:] == [m["created_at"] for m in OLD]


# --- the commands' own words -------------------------------------------------------------------


def test_post_and_list_say_the_store_is_unreachable_without_its_password(
    tmp_path: Path,
) -> None:
    url = "redis://:s3cret-pw@127.0.0.1:1/0"
    for args in (("post", "x"), ("list",)):
        result = cli(tmp_path, None, *args, GUESTBOOK_REDIS_LEADER_URL=url)
        assert result.returncode == 1
        assert "the store is unreachable" in result.stderr
        assert "127.0.0.1:1" in result.stderr
        assert "s3cret-pw" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_list_shows_each_message_on_one_line_whole(tmp_path: Path, cluster: Cluster) -> None:
    long_text = "long " * 90
    for text in ("first line\nsecond line\n\nfourth", long_text.strip()):
        assert cli(tmp_path, cluster, "post", text).returncode == 0
    listing = cli(tmp_path, cluster, "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"  {long_text.strip()}")
    assert lines[1].endswith("  first line⏎second line⏎⏎fourth")


def test_list_json_prints_the_messages_as_export_does(tmp_path: Path, cluster: Cluster) -> None:
    for text in ("one", "two\nlines", 'quoted "🎉"'):
        assert cli(tmp_path, cluster, "post", text).returncode == 0
    listing = cli(tmp_path, cluster, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    exported = cli(tmp_path, cluster, "export").stdout.splitlines()
    assert listing.stdout.splitlines() == list(reversed(exported))
    assert [json.loads(line)["text"] for line in listing.stdout.splitlines()] == [
        'quoted "🎉"',
        "two\nlines",
        "one",
    ]


@pytest.mark.parametrize(
    ("command", "shown", "hidden"),
    [
        ("status", (), ("--max-message-chars", "--write-replicas", "--log-level", "--workers")),
        ("list", (), ("--max-message-chars", "--write-replicas", "--log-level", "--workers")),
        ("export", (), ("--max-message-chars", "--write-replicas", "--log-level", "--workers")),
        ("import", ("--max-message-chars",), ("--write-replicas", "--log-level", "--workers")),
        ("post", ("--max-message-chars", "--write-replicas"), ("--log-level", "--port")),
        (
            "serve",
            ("--max-message-chars", "--write-replicas", "--log-level", "--port", "--workers"),
            (),
        ),
    ],
)
def test_each_command_offers_only_the_flags_it_uses(
    tmp_path: Path, command: str, shown: tuple[str, ...], hidden: tuple[str, ...]
) -> None:
    result = cli(tmp_path, None, command, "--help")
    assert result.returncode == 0
    store = ("--sentinels", "--sentinel-service", "--redis-leader-url", "--data-dir")
    for flag in (*shown, *store, "--store-timeout"):
        assert flag in result.stdout
    for flag in hidden:
        assert flag not in result.stdout


@pytest.mark.parametrize("command", ["serve", "status", "post", "list"])
def test_passwords_have_no_flag_and_the_help_says_where_they_come_from(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A flag's value is on the command line, which every user of the machine can read (ps).
    help_text = " ".join(cli(tmp_path, None, command, "--help").stdout.split())
    assert "--sentinel-password" not in help_text
    assert "--redis-password" not in help_text
    assert "Passwords come from the environment only: GUESTBOOK_SENTINEL_PASSWORD" in help_text
    assert "GUESTBOOK_REDIS_PASSWORD" in help_text
    for flag in ("--sentinel-password", "--redis-password"):
        with pytest.raises(SystemExit) as refused:
            build_parser().parse_args([command, flag, "s3cret-pw"])
        assert refused.value.code == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_status_follows_the_sentinels_named_by_flag_over_the_environment(
    tmp_path: Path,
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    with running_ha(tmp_path / "ha") as ha:
        result = cli(
            tmp_path, None, "status", "--json",
            "--sentinels", ha.env_sentinels, "--sentinel-service", SERVICE,
            GUESTBOOK_SENTINELS=nobody, GUESTBOOK_SENTINEL_SERVICE="not-this-one",
            GUESTBOOK_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
        )  # fmt: skip
        leader = ha.leader().port
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["mode"] == "sentinel"
    assert status["sentinel"]["service"] == SERVICE
    named = {s["address"]: s["leader"] for s in status["sentinel"]["sentinels"]}
    assert named == {s.address: f"127.0.0.1:{leader}" for s in ha.sentinels}
    assert SENTINEL_PASSWORD not in result.stdout + result.stderr


def test_workers_by_flag_is_checked_and_named_as_the_flag(tmp_path: Path) -> None:
    result = cli(tmp_path, None, "serve", "--workers", "0")
    assert result.returncode == 2
    assert "--workers (GUESTBOOK_WORKERS) must be between 1 and 256, not 0" in result.stderr


def test_serve_help_names_every_log_level(tmp_path: Path) -> None:
    help_text = " ".join(cli(tmp_path, None, "serve", "--help").stdout.split())
    assert "debug, info, warning, error, critical" in help_text


def test_a_bad_value_names_the_flag_it_came_from(tmp_path: Path) -> None:
    by_flag = cli(tmp_path, None, "serve", "--port", "abc")
    assert by_flag.returncode == 2
    assert "--port (GUESTBOOK_PORT) must be a whole number, not 'abc'" in by_flag.stderr
    by_env = cli(tmp_path, None, "serve", GUESTBOOK_PORT="abc")
    assert by_env.returncode == 2
    assert "GUESTBOOK_PORT must be a whole number, not 'abc'" in by_env.stderr
    assert "--port" not in by_env.stderr


def test_a_port_in_use_names_the_flag_it_came_from(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        by_flag = cli(tmp_path, None, "serve", "--port", port)
        by_env = cli(tmp_path, None, "serve", GUESTBOOK_PORT=port)
    assert by_flag.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in by_flag.stderr
    assert "choose another port with --port (GUESTBOOK_PORT)" in by_flag.stderr
    assert by_env.returncode == 1
    assert "choose another port with GUESTBOOK_PORT" in by_env.stderr
    assert not (tmp_path / "data" / "server.json").exists()


def test_export_has_every_acknowledged_post_while_the_followers_lag(
    tmp_path: Path, cluster: Cluster
) -> None:
    """A backup reads the leader: a follower that has not caught up would drop fresh posts."""
    assert cli(tmp_path, cluster, "post", "replicated").returncode == 0
    for follower in cluster.followers:
        follower.wait_synced()
        follower.client().replicaof("NO", "ONE")  # answering, but no longer catching up
    assert cli(tmp_path, cluster, "post", "only on the leader").returncode == 0
    exported = [json.loads(line) for line in cli(tmp_path, cluster, "export").stdout.splitlines()]
    assert [m["text"] for m in exported] == ["replicated", "only on the leader"]


def test_list_shows_a_post_made_a_moment_ago_while_the_followers_lag(
    tmp_path: Path, cluster: Cluster
) -> None:
    """A command is its own process, with no read-your-writes cookie: it reads the leader."""
    for follower in cluster.followers:
        follower.wait_synced()
        follower.client().replicaof("NO", "ONE")
    posted = cli(tmp_path, cluster, "post", "just now").stdout.strip()
    assert posted in cli(tmp_path, cluster, "list").stdout
