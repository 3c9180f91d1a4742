"""Settings: read once from the environment into one typed object, and the discovery rules
that turn them into the store's leader and follower addresses.

Nothing here connects to a store; resolving the tutorial's DNS names is the only I/O, and it
happens once, at start-up. A bad value raises `ConfigError` with one line naming the variable.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import platformdirs
from pydantic import SecretStr

LogFormat = Literal["text", "json"]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    # URLs may carry a password: kept as SecretStr so no repr, log line or error shows it.
    leader_url: SecretStr | None = None
    follower_urls: tuple[SecretStr, ...] = ()
    get_hosts_from: Literal["dns", "env"] | None = None
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("guestbook")))
    max_message_chars: int = 500
    write_replicas: int = 0
    store_timeout: float = 1.0
    rate_limit: int = 30
    log_level: str = "info"
    log_format: LogFormat = "text"
    # Live feed tuning: heartbeat comment interval, and messages queued for one slow client
    # before it is told to reconnect (never fewer than one feed batch, 500).
    sse_heartbeat: float = 15.0
    sse_queue: int = 1000
    # On SIGTERM, seconds to answer not-ready before the listener closes (a load balancer's
    # time to stop sending).
    shutdown_drain: float = 0.0
    # Kubernetes-injected Service variables, kept for GET_HOSTS_FROM=env.
    service_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        get = env.get

        get_hosts_from = _blank_to_none(get("GET_HOSTS_FROM"))
        if get_hosts_from not in (None, "dns", "env"):
            raise ConfigError(f"GET_HOSTS_FROM must be 'dns' or 'env', not {get_hosts_from!r}")

        leader_url = _blank_to_none(get("GUESTBOOK_REDIS_LEADER_URL"))
        if leader_url is not None:
            _check_redis_url("GUESTBOOK_REDIS_LEADER_URL", leader_url)
        followers = _split_urls(get("GUESTBOOK_REDIS_FOLLOWER_URL", ""))
        for url in followers:
            _check_redis_url("GUESTBOOK_REDIS_FOLLOWER_URL", url)

        log_format_default: LogFormat = "text" if sys.stdout.isatty() else "json"
        log_format = (_blank_to_none(get("GUESTBOOK_LOG_FORMAT")) or log_format_default).lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"GUESTBOOK_LOG_FORMAT must be 'text' or 'json', not {log_format!r}")
        log_level = (_blank_to_none(get("GUESTBOOK_LOG_LEVEL")) or "info").lower()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"GUESTBOOK_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

        data_dir = _blank_to_none(get("GUESTBOOK_DATA_DIR"))
        return cls(
            host=_blank_to_none(get("GUESTBOOK_HOST")) or "127.0.0.1",
            port=_int(env, "GUESTBOOK_PORT", 8080, 0, 65535),
            leader_url=SecretStr(leader_url) if leader_url is not None else None,
            follower_urls=tuple(SecretStr(url) for url in followers),
            get_hosts_from=get_hosts_from,  # type: ignore[arg-type]
            data_dir=(
                Path(data_dir).expanduser()
                if data_dir
                else Path(platformdirs.user_data_dir("guestbook"))
            ),
            max_message_chars=_int(env, "GUESTBOOK_MAX_MESSAGE_CHARS", 500, 1, 100_000),
            write_replicas=_int(env, "GUESTBOOK_WRITE_REPLICAS", 0, 0, 1000),
            store_timeout=_float(env, "GUESTBOOK_STORE_TIMEOUT", 1.0, 0.01, 60.0),
            rate_limit=_int(env, "GUESTBOOK_RATE_LIMIT", 30, 0, 1_000_000),
            log_level=log_level,
            log_format=log_format,  # type: ignore[arg-type]
            sse_heartbeat=_float(env, "GUESTBOOK_SSE_HEARTBEAT", 15.0, 0.05, 3600.0),
            sse_queue=_int(env, "GUESTBOOK_SSE_QUEUE", 1000, 500, 1_000_000),
            shutdown_drain=_float(env, "GUESTBOOK_SHUTDOWN_DRAIN", 0.0, 0.0, 600.0),
            service_env={k: v for k, v in env.items() if k.startswith("REDIS_")},
        )


@dataclass(frozen=True)
class StoreAddress:
    """Where the store lives: a leader URL and zero or more follower URLs, or the embedded one."""

    mode: Literal["redis", "embedded"]
    # The store's clients need the URLs whole, passwords included; repr shows them redacted.
    leader_url: str | None = field(default=None, repr=False)
    follower_urls: tuple[str, ...] = field(default=(), repr=False)
    source: str = ""

    def __repr__(self) -> str:
        leader = shown_url(self.leader_url) if self.leader_url else None
        followers = tuple(shown_url(url) for url in self.follower_urls)
        return (
            f"StoreAddress(mode={self.mode!r}, leader_url={leader!r}, "
            f"follower_urls={followers!r}, source={self.source!r})"
        )


Resolver = Callable[[str], bool]


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 6379, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return True


def discover(settings: Settings, resolves: Resolver = _resolves) -> StoreAddress:
    """Apply the contract's precedence: explicit URL, then GET_HOSTS_FROM, then embedded."""
    if settings.leader_url:
        return StoreAddress(
            "redis",
            settings.leader_url.get_secret_value(),
            tuple(url.get_secret_value() for url in settings.follower_urls),
            "GUESTBOOK_REDIS_LEADER_URL",
        )
    if settings.get_hosts_from == "dns":
        leader = "redis-leader" if resolves("redis-leader") else "redis-master"
        follower = "redis-follower" if resolves("redis-follower") else "redis-slave"
        return StoreAddress(
            "redis", f"redis://{leader}:6379/0", (f"redis://{follower}:6379/0",), "dns"
        )
    if settings.get_hosts_from == "env":
        env = settings.service_env
        leader_url = _service_url(env, ("REDIS_LEADER", "REDIS_MASTER"))
        if leader_url is None:
            raise ConfigError(
                "GET_HOSTS_FROM=env needs REDIS_LEADER_SERVICE_HOST "
                "(or REDIS_MASTER_SERVICE_HOST) in the environment"
            )
        follower_url = _service_url(env, ("REDIS_FOLLOWER", "REDIS_SLAVE"))
        followers = (follower_url,) if follower_url else ()
        return StoreAddress("redis", leader_url, followers, "env")
    return StoreAddress("embedded", source="embedded")


def _service_url(env: Mapping[str, str], prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        host = env.get(f"{prefix}_SERVICE_HOST")
        if host:
            port = env.get(f"{prefix}_SERVICE_PORT") or "6379"
            if not port.isdigit():
                raise ConfigError(f"{prefix}_SERVICE_PORT must be a port number, not {port!r}")
            bracketed = f"[{host}]" if ":" in host else host
            return f"redis://{bracketed}:{port}/0"
    return None


def redact_url(url: str) -> str:
    """The URL without its password, for logs, status and the page footer."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.password is None:
        # `redis://secret@host` is a password put where the user name goes: hide it too.
        netloc = f"***@{netloc}"
    else:
        netloc = f"{parts.username}:***@{netloc}" if parts.username else f":***@{netloc}"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def shown_url(url: str) -> str:
    """A URL as it may be printed: redacted, or only its scheme when it cannot be parsed
    (an unparsable URL might still hold a password somewhere)."""
    try:
        return redact_url(url)
    except ValueError:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme}://(unparsable)" if scheme.isalnum() else "(unparsable)"


def _check_redis_url(name: str, url: str) -> None:
    # Error lines show the URL only through shown_url: a password never reaches a terminal.
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric port
    except ValueError:
        raise ConfigError(
            f"{name} is not a valid URL (a port that is not a number, or a bad address): "
            f"{shown_url(url)!r}"
        ) from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"{name} must start with redis://, rediss:// or unix://, got {shown_url(url)!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{name} has no host: {shown_url(url)!r}")
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError(f"{name} has no socket path: {shown_url(url)!r}")
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"{name} has a database that is not a number: {db!r}")
    del port


def _split_urls(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _blank_to_none(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _blank_to_none(env.get(name))
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = _blank_to_none(env.get(name))
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high} seconds, not {value}")
    return value
