"""The `guestbook` command: `serve` and the store's tools (`status`, `post`, `list`, `export`,
`import`). Every flag mirrors an environment variable, and both feed one `Settings`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .embedded import EmbeddedError, store_url_for
from .errors import GuestbookError, InvalidMessage
from .messages import clean_text, ms_from_iso, parse_id
from .settings import ConfigError, Settings, StoreAddress, discover
from .store import MessageStore

# flag -> environment variable it mirrors
FLAGS: dict[str, tuple[str, str]] = {
    "--host": ("GUESTBOOK_HOST", "listen address (default 127.0.0.1)"),
    "--port": ("GUESTBOOK_PORT", "listen port (default 8080)"),
    "--redis-leader-url": ("GUESTBOOK_REDIS_LEADER_URL", "leader, e.g. redis://:pw@host:6379/0"),
    "--redis-follower-url": (
        "GUESTBOOK_REDIS_FOLLOWER_URL",
        "followers: one address or a comma-separated list (default: read from the leader)",
    ),
    "--get-hosts-from": ("GET_HOSTS_FROM", "dns or env: find the tutorial's Redis Services"),
    "--data-dir": ("GUESTBOOK_DATA_DIR", "where the embedded store keeps its data"),
    "--max-message-chars": ("GUESTBOOK_MAX_MESSAGE_CHARS", "longest message accepted (500)"),
    "--write-replicas": (
        "GUESTBOOK_WRITE_REPLICAS",
        "acknowledge a write once this many followers have it (0)",
    ),
    "--store-timeout": ("GUESTBOOK_STORE_TIMEOUT", "seconds a store call may take (1)"),
    "--rate-limit": ("GUESTBOOK_RATE_LIMIT", "posts per minute per client; 0 = off (30)"),
    "--log-level": ("GUESTBOOK_LOG_LEVEL", "debug, info, warning, error (info)"),
    "--log-format": ("GUESTBOOK_LOG_FORMAT", "text or json (text on a terminal, else json)"),
    "--shutdown-drain": (
        "GUESTBOOK_SHUTDOWN_DRAIN",
        "on SIGTERM, seconds to report not-ready before the listener closes (0)",
    ),
    "--sse-heartbeat": ("GUESTBOOK_SSE_HEARTBEAT", "seconds between live-feed heartbeats (15)"),
    "--sse-queue": (
        "GUESTBOOK_SSE_QUEUE",
        "messages queued for one slow live client before it must reconnect (1000, min 500)",
    ),
}
STORE_FLAGS = (
    "--redis-leader-url",
    "--redis-follower-url",
    "--get-hosts-from",
    "--data-dir",
    "--store-timeout",
    "--max-message-chars",
    "--write-replicas",
)


def _add_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    group = parser.add_argument_group("configuration (each flag overrides its variable)")
    for name in names:
        env, help_text = FLAGS[name]
        group.add_argument(name, dest=env, metavar="VALUE", help=f"{help_text} [{env}]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestbook",
        description="The Kubernetes guestbook: a web frontend over a Redis leader and its "
        "followers, or over an embedded store when none is configured.",
    )
    parser.add_argument("--version", action="version", version=f"guestbook {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the web frontend",
        description="Run the web frontend (page, JSON API, legacy API, probes, metrics). "
        "With no store configured it starts the embedded store and stops it on exit.",
    )
    _add_flags(serve, list(FLAGS))

    status = commands.add_parser(
        "status",
        help="show the store: mode, servers reachable, replication lag, message count",
        description="Show which store is used, whether the leader and each follower answer, "
        "their replication lag and the number of messages. Passwords are never shown.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    _add_flags(status, STORE_FLAGS)

    post = commands.add_parser(
        "post", help="post a message", description="Post one message; prints its id."
    )
    post.add_argument("text", help="the message")
    _add_flags(post, STORE_FLAGS)

    listing = commands.add_parser(
        "list", help="list messages, newest first", description="Print messages, newest first."
    )
    listing.add_argument("--limit", type=int, default=20, help="how many (1-200, default 20)")
    listing.add_argument("--before", help="only messages older than this id")
    _add_flags(listing, STORE_FLAGS)

    export = commands.add_parser(
        "export",
        help="write every message as JSON lines to stdout",
        description="Write every message, oldest first, one JSON object a line: "
        '{"id": ..., "text": ..., "created_at": ...}.',
    )
    _add_flags(export, STORE_FLAGS)

    imp = commands.add_parser(
        "import",
        help="import messages from an export or an old PHP guestbook (idempotent)",
        description="Import FILE ('-' for stdin): JSON lines written by `guestbook export`, "
        "or the original PHP guestbook's comma-joined `messages` value (as plain text, or as "
        'its guestbook.php answer {"data": "..."}). Importing the same file again adds '
        "nothing. Every entry is checked first; if any is invalid, nothing is imported.",
    )
    imp.add_argument("file", help="the file to import, or - for stdin")
    _add_flags(imp, STORE_FLAGS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k.isupper() and v is not None}
    try:
        settings = Settings.from_env({**os.environ, **overrides})
    except ConfigError as exc:
        print(f"guestbook: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            from .server import AddressInUse, serve

            try:
                serve(settings, os.environ.get("HOSTNAME") or socket.gethostname())
            except AddressInUse as exc:
                print(f"guestbook: {exc}", file=sys.stderr)
                return 1
            return 0
        command = COMMANDS[args.command]
        return _with_store(settings, lambda ctx: command(ctx, args))
    except (ConfigError, EmbeddedError, GuestbookError) as exc:
        print(f"guestbook: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


@contextlib.contextmanager
def _address(settings: Settings) -> Iterator[StoreAddress]:
    address = discover(settings)
    if address.mode != "embedded":
        yield address
        return
    with store_url_for(settings.data_dir) as url:
        yield StoreAddress("embedded", url, (), "embedded")


@dataclass(frozen=True)
class Context:
    """What a command works with: the store, the settings, and which store mode it is."""

    store: MessageStore
    settings: Settings
    mode: str


Command = Callable[[Context, argparse.Namespace], Coroutine[Any, Any, int]]


def _with_store(settings: Settings, run: Callable[[Context], Coroutine[Any, Any, int]]) -> int:
    with _address(settings) as address:

        async def go() -> int:
            async with _context(settings, address) as ctx:
                return await run(ctx)

        return asyncio.run(go())


@contextlib.asynccontextmanager
async def _context(settings: Settings, address: StoreAddress) -> AsyncIterator[Context]:
    assert address.leader_url is not None
    store = MessageStore(
        address.leader_url,
        address.follower_urls,
        timeout=settings.store_timeout,
        write_replicas=settings.write_replicas,
    )
    try:
        yield Context(store, settings, address.mode)
    finally:
        await store.close()


async def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    status = await ctx.store.status()
    mode = ctx.mode
    data = {
        "mode": mode,
        "leader": status.leader.as_dict(),
        "followers": [f.as_dict() for f in status.followers],
        "message_count": status.message_count,
        "last_id": status.last_id,
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"store:     {mode}")
        print(f"leader:    {status.leader.url}  {_reach(status.leader.reachable)}")
        if not status.followers:
            print("followers: none (reads go to the leader)")
        for f in status.followers:
            lag = f"lag {f.lag_bytes} bytes" if f.lag_bytes is not None else "lag unknown"
            link = f", link {f.link}" if f.link else ""
            print(f"follower:  {f.url}  {_reach(f.reachable)}{link}, {lag}")
        count = "unknown" if status.message_count is None else str(status.message_count)
        print(f"messages:  {count}")
    return 0 if status.readable else 1


def _reach(ok: bool) -> str:
    return "reachable" if ok else "UNREACHABLE"


async def cmd_post(ctx: Context, args: argparse.Namespace) -> int:
    text = clean_text(args.text, ctx.settings.max_message_chars)
    message = await ctx.store.append(text)
    print(message.id)
    return 0


async def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    if args.before:
        parse_id(args.before)
    page = await ctx.store.page(max(1, min(200, args.limit)), args.before)
    for m in page.messages:
        print(f"{m.created_at}  {m.id}  {m.text}")
    if page.next:
        print(f"(older: guestbook list --before {page.next})", file=sys.stderr)
    return 0


async def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    for message in await ctx.store.iter_all():
        sys.stdout.write(json.dumps(message.as_dict(), ensure_ascii=False) + "\n")
    return 0


@dataclass(frozen=True)
class ImportEntry:
    key: str
    text: str
    created_ms: int
    wanted_id: str | None


def parse_import(content: str, max_chars: int) -> list[ImportEntry]:
    """Entries of an export (JSON lines) or of the PHP guestbook's comma-joined value."""
    stripped = content.strip()
    if not stripped:
        return []
    if stripped.startswith("{"):
        lines = [line for line in stripped.splitlines() if line.strip()]
        first = json.loads(lines[0])
        if isinstance(first, dict) and set(first) == {"data"} and len(lines) == 1:
            return _php_entries(str(first["data"]), max_chars)
        return _jsonl_entries(lines, max_chars)
    return _php_entries(stripped, max_chars)


def _jsonl_entries(lines: list[str], max_chars: int) -> list[ImportEntry]:
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            message_id = str(record["id"])
            parse_id(message_id, "id")
            created_ms = ms_from_iso(str(record["created_at"]))
            text = clean_text(str(record["text"]), max_chars)
        except (ValueError, KeyError, TypeError, GuestbookError) as exc:
            raise InvalidMessage(f"line {number}: not a guestbook export entry ({exc})") from None
        entries.append(ImportEntry(f"id:{message_id}", text, created_ms, message_id))
    return entries


def _php_entries(value: str, max_chars: int) -> list[ImportEntry]:
    now = int(time.time() * 1000)
    entries = []
    for index, raw in enumerate(value.split(",")):
        if not raw.strip():
            continue  # the PHP page left empty entries behind; they were never messages
        try:
            text = clean_text(raw, max_chars)
        except InvalidMessage as exc:
            raise InvalidMessage(f"entry {index + 1}: {exc}") from None
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        entries.append(ImportEntry(f"php:{index}:{digest}", text, now, None))
    return entries


async def cmd_import(ctx: Context, args: argparse.Namespace) -> int:
    if args.file == "-":
        content = sys.stdin.read()
    else:
        try:
            content = await asyncio.to_thread(Path(args.file).read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"guestbook: cannot read {args.file}: {exc}", file=sys.stderr)
            return 1
    try:
        entries = parse_import(content, ctx.settings.max_message_chars)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"not JSON lines: {exc}") from None
    added = 0
    for entry in entries:
        if await ctx.store.import_message(entry.key, entry.text, entry.created_ms, entry.wanted_id):
            added += 1
    print(f"imported {added} new message(s), {len(entries) - added} already present")
    return 0


COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "post": cmd_post,
    "list": cmd_list,
    "export": cmd_export,
    "import": cmd_import,
}
