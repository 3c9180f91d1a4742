"""Configuration: every discovery rule of the contract, precedence, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guestbook.settings import ConfigError, Settings, discover, redact_url


def resolver(*names: str) -> object:
    return lambda host: host in names


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert (s.max_message_chars, s.write_replicas, s.store_timeout, s.rate_limit) == (
        500, 0, 1.0, 30,
    )  # fmt: skip
    assert s.log_level == "info"
    assert discover(s).mode == "embedded"


def test_explicit_urls_win_over_get_hosts_from() -> None:
    s = Settings.from_env(
        {
            "GUESTBOOK_REDIS_LEADER_URL": "redis://:pw@leader.example:6380/2",
            "GUESTBOOK_REDIS_FOLLOWER_URL": "redis://f1:6379, redis://f2:6379",
            "GET_HOSTS_FROM": "dns",
        }
    )
    address = discover(s, resolver())
    assert address.leader_url == "redis://:pw@leader.example:6380/2"
    assert address.follower_urls == ("redis://f1:6379", "redis://f2:6379")


def test_leader_alone_means_reads_from_the_leader() -> None:
    address = discover(Settings.from_env({"GUESTBOOK_REDIS_LEADER_URL": "redis://l:6379"}))
    assert address.follower_urls == ()


def test_dns_prefers_leader_and_follower_names() -> None:
    address = discover(
        Settings.from_env({"GET_HOSTS_FROM": "dns"}),
        resolver("redis-leader", "redis-follower", "redis-master", "redis-slave"),
    )
    assert address.leader_url == "redis://redis-leader:6379/0"
    assert address.follower_urls == ("redis://redis-follower:6379/0",)


def test_dns_falls_back_to_master_and_slave_names() -> None:
    address = discover(
        Settings.from_env({"GET_HOSTS_FROM": "dns"}), resolver("redis-master", "redis-slave")
    )
    assert address.leader_url == "redis://redis-master:6379/0"
    assert address.follower_urls == ("redis://redis-slave:6379/0",)


def test_env_reads_kubernetes_service_variables() -> None:
    env = {
        "GET_HOSTS_FROM": "env",
        "REDIS_LEADER_SERVICE_HOST": "10.0.0.5",
        "REDIS_LEADER_SERVICE_PORT": "6379",
        "REDIS_FOLLOWER_SERVICE_HOST": "10.0.0.6",
        "REDIS_FOLLOWER_SERVICE_PORT": "6380",
        "REDIS_MASTER_SERVICE_HOST": "10.9.9.9",
    }
    address = discover(Settings.from_env(env))
    assert address.leader_url == "redis://10.0.0.5:6379/0"
    assert address.follower_urls == ("redis://10.0.0.6:6380/0",)


def test_env_falls_back_to_master_and_slave_variables() -> None:
    env = {
        "GET_HOSTS_FROM": "env",
        "REDIS_MASTER_SERVICE_HOST": "10.0.0.7",
        "REDIS_MASTER_SERVICE_PORT": "6379",
        "REDIS_SLAVE_SERVICE_HOST": "10.0.0.8",
    }
    address = discover(Settings.from_env(env))
    assert address.leader_url == "redis://10.0.0.7:6379/0"
    assert address.follower_urls == ("redis://10.0.0.8:6379/0",)


def test_env_with_only_a_leader_reads_from_it() -> None:
    env = {"GET_HOSTS_FROM": "env", "REDIS_LEADER_SERVICE_HOST": "fd00::1"}
    address = discover(Settings.from_env(env))
    assert address.leader_url == "redis://[fd00::1]:6379/0"
    assert address.follower_urls == ()


def test_env_without_a_leader_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="REDIS_LEADER_SERVICE_HOST"):
        discover(Settings.from_env({"GET_HOSTS_FROM": "env"}))


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GET_HOSTS_FROM": "consul"}, "GET_HOSTS_FROM"),
        ({"GUESTBOOK_REDIS_LEADER_URL": "http://x:6379"}, "GUESTBOOK_REDIS_LEADER_URL"),
        ({"GUESTBOOK_REDIS_LEADER_URL": "redis://host:port"}, "GUESTBOOK_REDIS_LEADER_URL"),
        ({"GUESTBOOK_REDIS_LEADER_URL": "redis://"}, "GUESTBOOK_REDIS_LEADER_URL"),
        ({"GUESTBOOK_REDIS_LEADER_URL": "redis://h:6379/x"}, "GUESTBOOK_REDIS_LEADER_URL"),
        ({"GUESTBOOK_REDIS_FOLLOWER_URL": "redis://a, nope"}, "GUESTBOOK_REDIS_FOLLOWER_URL"),
        ({"GUESTBOOK_PORT": "eighty"}, "GUESTBOOK_PORT"),
        ({"GUESTBOOK_PORT": "70000"}, "GUESTBOOK_PORT"),
        ({"GUESTBOOK_MAX_MESSAGE_CHARS": "0"}, "GUESTBOOK_MAX_MESSAGE_CHARS"),
        ({"GUESTBOOK_STORE_TIMEOUT": "soon"}, "GUESTBOOK_STORE_TIMEOUT"),
        ({"GUESTBOOK_RATE_LIMIT": "-1"}, "GUESTBOOK_RATE_LIMIT"),
        ({"GUESTBOOK_WRITE_REPLICAS": "1.5"}, "GUESTBOOK_WRITE_REPLICAS"),
        ({"GUESTBOOK_LOG_FORMAT": "xml"}, "GUESTBOOK_LOG_FORMAT"),
        ({"GUESTBOOK_LOG_LEVEL": "loud"}, "GUESTBOOK_LOG_LEVEL"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_serve_with_a_bad_value_stops_with_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guestbook", "serve"],
        env={"GET_HOSTS_FROM": "consul", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "GET_HOSTS_FROM" in lines[0]


def test_passwords_are_redacted_for_display() -> None:
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("redis://user:pw@host/0") == "redis://user:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


def test_flags_exist_for_every_guestbook_variable_but_the_passwords() -> None:
    from pydantic import SecretStr

    from guestbook.cli import ENV_ONLY, FLAGS

    documented = {
        "GUESTBOOK_HOST", "GUESTBOOK_PORT", "GUESTBOOK_REDIS_LEADER_URL",
        "GUESTBOOK_REDIS_FOLLOWER_URL", "GUESTBOOK_DATA_DIR", "GUESTBOOK_MAX_MESSAGE_CHARS",
        "GUESTBOOK_WRITE_REPLICAS", "GUESTBOOK_STORE_TIMEOUT", "GUESTBOOK_RATE_LIMIT",
        "GUESTBOOK_LOG_LEVEL", "GUESTBOOK_LOG_FORMAT", "GUESTBOOK_SHUTDOWN_DRAIN",
        "GUESTBOOK_SSE_HEARTBEAT", "GUESTBOOK_SSE_QUEUE", "GET_HOSTS_FROM",
        "GUESTBOOK_ADMIN_TOKEN", "GUESTBOOK_MODERATION", "GUESTBOOK_MAX_LINKS",
        "GUESTBOOK_TRUSTED_PROXIES", "GUESTBOOK_INSTANCE", "GUESTBOOK_SENTINELS",
        "GUESTBOOK_SENTINEL_SERVICE", "GUESTBOOK_WORKERS",
    }  # fmt: skip
    flagged = {env for env, _ in FLAGS.values()}
    assert flagged == documented
    # Every variable the settings read has a flag, or is a password kept off the command line.
    fields = Settings.model_fields.values()
    read = {str(f.validation_alias) for f in fields if f.validation_alias is not None}
    assert read == flagged | set(ENV_ONLY)
    assert not flagged & set(ENV_ONLY)
    secrets = {
        str(f.validation_alias)
        for f in fields
        if SecretStr in getattr(f.annotation, "__args__", ())
    }
    assert set(ENV_ONLY) <= secrets
    assert set(ENV_ONLY) == {"GUESTBOOK_SENTINEL_PASSWORD", "GUESTBOOK_REDIS_PASSWORD"}


SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{SECRET}@host:6379",
        f"redis://:{SECRET}@host:port",
        f"redis://user:{SECRET}@[::1:6379",
        f"redis://:{SECRET}@/0",
        f"redis://:{SECRET}@host:6379/db",
        f"ftp://{SECRET}@host",
    ],
)
def test_a_bad_url_names_its_variable_but_never_its_password(url: str) -> None:
    for name in ("GUESTBOOK_REDIS_LEADER_URL", "GUESTBOOK_REDIS_FOLLOWER_URL"):
        with pytest.raises(ConfigError, match=name) as caught:
            Settings.from_env({name: url})
        assert SECRET not in str(caught.value)


def test_settings_and_addresses_never_show_a_password() -> None:
    settings = Settings.from_env(
        {
            "GUESTBOOK_REDIS_LEADER_URL": f"redis://:{SECRET}@leader:6379/0",
            "GUESTBOOK_REDIS_FOLLOWER_URL": f"redis://:{SECRET}@follower:6379/0",
        }
    )
    address = discover(settings)
    for shown in (repr(settings), str(settings), repr(address), str(address)):
        assert SECRET not in shown
    assert "redis://:***@leader:6379/0" in repr(address)
    # The clients still get the whole URL.
    assert address.leader_url == f"redis://:{SECRET}@leader:6379/0"


def test_serve_with_a_bad_url_never_prints_its_password(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guestbook", "serve"],
        env={
            "GUESTBOOK_REDIS_LEADER_URL": f"http://:{SECRET}@host:6379",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "GUESTBOOK_REDIS_LEADER_URL" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_a_password_in_the_user_name_place_is_redacted_too() -> None:
    assert redact_url(f"redis://{SECRET}@host:6379/0") == "redis://***@host:6379/0"


def test_moderation_settings_are_read_and_checked() -> None:
    settings = Settings.from_env(
        {
            "GUESTBOOK_ADMIN_TOKEN": "a-moderator-token-of-some-length",
            "GUESTBOOK_MODERATION": "PRE",
            "GUESTBOOK_MAX_LINKS": "0",
            "GUESTBOOK_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16,fd00::/8",
        }
    )
    assert settings.moderation == "pre"
    assert settings.max_links == 0
    assert [str(n) for n in settings.trusted_proxies] == [
        "10.0.0.1/32",
        "192.168.0.0/16",
        "fd00::/8",
    ]
    assert "a-moderator-token" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GUESTBOOK_MODERATION": "post"}, "GUESTBOOK_MODERATION"),
        ({"GUESTBOOK_MAX_LINKS": "-1"}, "GUESTBOOK_MAX_LINKS"),
        ({"GUESTBOOK_TRUSTED_PROXIES": "10.0.0.0/33"}, "GUESTBOOK_TRUSTED_PROXIES"),
        ({"GUESTBOOK_ADMIN_TOKEN": "short-secret"}, "GUESTBOOK_ADMIN_TOKEN"),
    ],
)
def test_bad_moderation_values_name_their_variable_and_never_the_token(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named) as caught:
        Settings.from_env(env)
    assert "short-secret" not in str(caught.value)


def test_the_instance_is_named_by_its_variable_else_by_hostname() -> None:
    assert Settings.from_env({"GUESTBOOK_INSTANCE": "frontend-7"}).instance == "frontend-7"
    assert Settings.from_env({"HOSTNAME": "frontend-5d9c-x2"}).instance == "frontend-5d9c-x2"
    assert Settings.from_env({}).instance  # the machine's hostname
