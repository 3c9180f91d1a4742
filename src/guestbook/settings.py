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
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
REDIS_SCHEMES = ("redis", "rediss", "unix")
MIN_TOKEN_CHARS = 16


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def _default_data_dir() -> Path:
    # Imported here: a frontend given its store's address or a data dir never needs it.
    import platformdirs

    return Path(platformdirs.user_data_dir("guestbook"))


def _default_log_format() -> LogFormat:
    return "text" if sys.stdout.isatty() else "json"


class Settings(BaseSettings):
    """Every setting, typed and range-checked; built by `from_env` from an environment.

    Each field's alias is the environment variable that sets it; the CLI's flags feed the same
    names, so a value reads and fails the same way whichever way it came.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    host: str = Field("127.0.0.1", validation_alias="GUESTBOOK_HOST")
    port: int = Field(8080, ge=0, le=65535, validation_alias="GUESTBOOK_PORT")
    # URLs may carry a password: kept as SecretStr so no repr, log line or error shows it.
    leader_url: SecretStr | None = Field(None, validation_alias="GUESTBOOK_REDIS_LEADER_URL")
    follower_urls: tuple[SecretStr, ...] = Field(
        (), validation_alias="GUESTBOOK_REDIS_FOLLOWER_URL"
    )
    get_hosts_from: Literal["dns", "env"] | None = Field(None, validation_alias="GET_HOSTS_FROM")
    data_dir: Path = Field(default_factory=_default_data_dir, validation_alias="GUESTBOOK_DATA_DIR")
    max_message_chars: int = Field(
        500, ge=1, le=100_000, validation_alias="GUESTBOOK_MAX_MESSAGE_CHARS"
    )
    write_replicas: int = Field(0, ge=0, le=1000, validation_alias="GUESTBOOK_WRITE_REPLICAS")
    store_timeout: float = Field(1.0, ge=0.01, le=60.0, validation_alias="GUESTBOOK_STORE_TIMEOUT")
    rate_limit: int = Field(30, ge=0, le=1_000_000, validation_alias="GUESTBOOK_RATE_LIMIT")
    # Moderation: the moderators' bearer token (never shown: SecretStr), whether every post
    # waits for approval, how many links a post may carry before it is held, and the proxies
    # whose X-Forwarded-For names the client.
    admin_token: SecretStr | None = Field(None, validation_alias="GUESTBOOK_ADMIN_TOKEN")
    moderation: Literal["off", "pre"] = Field("off", validation_alias="GUESTBOOK_MODERATION")
    max_links: int = Field(2, ge=0, le=1000, validation_alias="GUESTBOOK_MAX_LINKS")
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = Field(
        (), validation_alias="GUESTBOOK_TRUSTED_PROXIES"
    )
    log_level: LogLevel = Field("info", validation_alias="GUESTBOOK_LOG_LEVEL")
    log_format: LogFormat = Field(
        default_factory=_default_log_format, validation_alias="GUESTBOOK_LOG_FORMAT"
    )
    # Live feed tuning: heartbeat comment interval, and messages queued for one slow client
    # before it is told to reconnect (never fewer than one feed batch, 500).
    sse_heartbeat: float = Field(
        15.0, ge=0.05, le=3600.0, validation_alias="GUESTBOOK_SSE_HEARTBEAT"
    )
    sse_queue: int = Field(1000, ge=500, le=1_000_000, validation_alias="GUESTBOOK_SSE_QUEUE")
    # On SIGTERM, seconds to answer not-ready before the listener closes (a load balancer's
    # time to stop sending).
    shutdown_drain: float = Field(
        0.0, ge=0.0, le=600.0, validation_alias="GUESTBOOK_SHUTDOWN_DRAIN"
    )
    # Redis Sentinel: the sentinels' addresses and the service they watch; when set they win
    # over every other store setting. The password, if the sentinels ask for one, is kept
    # apart from the addresses (which are logged) as a SecretStr.
    sentinels: tuple[tuple[str, int], ...] = Field((), validation_alias="GUESTBOOK_SENTINELS")
    sentinel_service: str = Field(
        "guestbook", min_length=1, max_length=200, validation_alias="GUESTBOOK_SENTINEL_SERVICE"
    )
    sentinel_password: SecretStr | None = Field(
        None, validation_alias="GUESTBOOK_SENTINEL_PASSWORD"
    )
    # The leader's and followers' password when the sentinels name them (their addresses
    # come bare from the sentinels; the URL settings carry their own).
    redis_password: SecretStr | None = Field(None, validation_alias="GUESTBOOK_REDIS_PASSWORD")
    # Frontend worker processes sharing the port on one machine.
    workers: int = Field(1, ge=1, le=256, validation_alias="GUESTBOOK_WORKERS")
    # This frontend's name in /api/status, /status, logs and metrics: the pod name on Kubernetes.
    instance: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=100,
        validation_alias="GUESTBOOK_INSTANCE",
    )
    # Kubernetes-injected Service variables, kept for GET_HOSTS_FROM=env.
    service_env: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `from_env` hands over the environment it was given (os.environ, or a test's own
        # mapping with the CLI's flags merged in): nothing is read behind its back.
        return (init_settings,)

    @field_validator("host", mode="before")
    @classmethod
    def _host(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("leader_url", mode="before")
    @classmethod
    def _leader(cls, value: object) -> object:
        if isinstance(value, str):
            _check_redis_url(value)
        return value

    @field_validator("follower_urls", mode="before")
    @classmethod
    def _followers(cls, value: object) -> object:
        if isinstance(value, str):
            value = _split_urls(value)
            for url in value:
                _check_redis_url(url)
        return value

    @field_validator("sentinels", mode="before")
    @classmethod
    def _sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(_host_port(part) for part in _split_urls(value))
        return value

    @field_validator("admin_token", mode="after")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # A token a moderator could guess is no protection; the message never shows it.
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters long")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        networks = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            try:
                networks.append(ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"has {part!r}, which is not an address or a CIDR") from None
        return tuple(networks)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("log_level", "log_format", "moderation", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `env` (default: the process environment); `ConfigError` naming the
        variable for a bad value, never showing a URL's password."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, str):
                raw = _blank_to_none(env.get(alias))
                if raw is not None:
                    values[alias] = raw
            del name
        values["service_env"] = {k: v for k, v in env.items() if k.startswith("REDIS_")}
        if "GUESTBOOK_INSTANCE" not in values:
            # Kubernetes sets HOSTNAME to the pod's name.
            hostname = _blank_to_none(env.get("HOSTNAME"))
            if hostname is not None:
                values["GUESTBOOK_INSTANCE"] = hostname
        try:
            return cls(**values)
        except ValidationError as exc:
            raise _config_error(cls, exc, values) from None


def _config_error(
    cls: type[Settings], exc: ValidationError, values: Mapping[str, Any]
) -> ConfigError:
    """The first problem, in one line that names the variable."""
    error = exc.errors(include_url=False, include_input=False)[0]
    alias = str(error["loc"][0]) if error["loc"] else "configuration"
    raw = values.get(alias)
    shown = repr(raw)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    field = next(
        (info for info in cls.model_fields.values() if info.validation_alias == alias), None
    )
    seconds = field is not None and field.annotation is float
    if kind == "value_error":
        return ConfigError(f"{alias} {ctx.get('error', error['msg'])}")
    if kind == "int_parsing" or kind == "int_from_float":
        return ConfigError(f"{alias} must be a whole number, not {shown}")
    if kind == "float_parsing":
        return ConfigError(f"{alias} must be a number of seconds, not {shown}")
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = _bounds(field)
        unit = " seconds" if seconds else ""
        return ConfigError(f"{alias} must be between {low} and {high}{unit}, not {raw}")
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        return ConfigError(f"{alias} must be one of {expected}, not {shown}")
    return ConfigError(f"{alias}: {error['msg']}")


def _bounds(field: FieldInfo | None) -> tuple[object, object]:
    low: object = None
    high: object = None
    for item in field.metadata if field is not None else ():
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


@dataclass(frozen=True)
class StoreAddress:
    """Where the store lives: a leader URL and zero or more follower URLs, the sentinels that
    name them, or the embedded one."""

    mode: Literal["redis", "embedded", "sentinel"]
    # The store's clients need the URLs whole, passwords included; repr shows them redacted.
    leader_url: str | None = field(default=None, repr=False)
    follower_urls: tuple[str, ...] = field(default=(), repr=False)
    source: str = ""
    # Mode "sentinel": the sentinels' addresses and the service they watch.
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_service: str = ""

    def __repr__(self) -> str:
        leader = shown_url(self.leader_url) if self.leader_url else None
        followers = tuple(shown_url(url) for url in self.follower_urls)
        sentinels = f", sentinels={self.sentinels!r}" if self.sentinels else ""
        return (
            f"StoreAddress(mode={self.mode!r}, leader_url={leader!r}, "
            f"follower_urls={followers!r}, source={self.source!r}{sentinels})"
        )


Resolver = Callable[[str], bool]


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 6379, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return True


def discover(settings: Settings, resolves: Resolver = _resolves) -> StoreAddress:
    """Apply the contract's precedence: sentinels, explicit URL, GET_HOSTS_FROM, embedded."""
    if settings.sentinels:
        return StoreAddress(
            "sentinel",
            source="GUESTBOOK_SENTINELS",
            sentinels=settings.sentinels,
            sentinel_service=settings.sentinel_service,
        )
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


def _check_redis_url(url: str) -> None:
    """Raises ValueError saying what is wrong; the variable's name is put before it by
    `from_env`. The URL appears only through shown_url: a password never reaches a terminal."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric port
    except ValueError:
        raise ValueError(
            "is not a valid URL (a port that is not a number, or a bad address): "
            f"{shown_url(url)!r}"
        ) from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"must start with redis://, rediss:// or unix://, got {shown_url(url)!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"has no host: {shown_url(url)!r}")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"has no socket path: {shown_url(url)!r}")
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"has a database that is not a number: {db!r}")
    del port


def _host_port(part: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, or a bare host (port 26379, Sentinel's own)."""
    host, port = part, "26379"
    if part.startswith("["):
        host, _, rest = part[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"has {part!r}, which is not host:port")
            port = rest[1:]
    elif part.count(":") == 1:
        host, port = part.split(":")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"has {part!r}, which is not host:port")
    return host, int(port)


def _split_urls(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _blank_to_none(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()
