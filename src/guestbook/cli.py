"""The `guestbook` command: `serve` and the store's tools (`status`, `post`, `list`, `export`,
`import`), and moderation on the store directly (`remove`, `queue`, `approve`, `reject`,
`audit`, `block`), which needs no token: whoever reaches the store may moderate it, and every
action is audited as `cli`. Every flag mirrors an environment variable, and both feed one
`Settings`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, moderation
from .embedded import EmbeddedError, store_url_for
from .errors import GuestbookError, StoreUnavailable
from .importing import parse_import
from .messages import MAX_PAGE, Message, clean_text, parse_id
from .settings import LOG_LEVELS, ConfigError, Settings, StoreAddress, discover
from .store import MessageStore, open_store

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
    "--rate-limit": (
        "GUESTBOOK_RATE_LIMIT",
        "posts per minute per client, counted across all frontends; 0 = off (30)",
    ),
    "--admin-token": (
        "GUESTBOOK_ADMIN_TOKEN",
        "the moderators' bearer token, at least 16 characters (unset: moderation API 403)",
    ),
    "--moderation": ("GUESTBOOK_MODERATION", "off, or pre: hold every post for approval (off)"),
    "--instance": (
        "GUESTBOOK_INSTANCE",
        "this frontend's name in status, logs and metrics (default: the hostname)",
    ),
    "--max-links": ("GUESTBOOK_MAX_LINKS", "hold a post with more links than this (2)"),
    "--trusted-proxies": (
        "GUESTBOOK_TRUSTED_PROXIES",
        "addresses or CIDRs of proxies whose X-Forwarded-For is believed",
    ),
    "--log-level": ("GUESTBOOK_LOG_LEVEL", f"{', '.join(LOG_LEVELS)} (info)"),
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
    "--sentinels": (
        "GUESTBOOK_SENTINELS",
        "Redis Sentinel addresses, host:port,...; when set they win over every other store setting",
    ),
    "--sentinel-service": (
        "GUESTBOOK_SENTINEL_SERVICE",
        "the service the sentinels monitor (guestbook)",
    ),
    "--workers": ("GUESTBOOK_WORKERS", "frontend worker processes sharing the port (1)"),
}
# Read from the environment only: a flag's value is on the command line, which every user of
# the machine can read (`ps`, /proc/PID/cmdline). Set them in the environment or a Secret.
ENV_ONLY = {
    "GUESTBOOK_SENTINEL_PASSWORD": "the sentinels' password",
    "GUESTBOOK_REDIS_PASSWORD": "the leader's and followers' password when sentinels name them",
}
# What finds and reaches the store: every command but `serve` needs these and only these,
# plus what the command itself checks or waits for.
STORE_FLAGS = (
    "--sentinels",
    "--sentinel-service",
    "--redis-leader-url",
    "--redis-follower-url",
    "--get-hosts-from",
    "--data-dir",
    "--store-timeout",
)
POST_FLAGS = (*STORE_FLAGS, "--max-message-chars", "--write-replicas")
IMPORT_FLAGS = (*STORE_FLAGS, "--max-message-chars")
ENV_FLAGS = {env: flag for flag, (env, _) in FLAGS.items()}


def _add_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    group = parser.add_argument_group(
        "configuration (each flag overrides its variable)",
        "Passwords come from the environment only: "
        + "; ".join(f"{env}, {what}" for env, what in ENV_ONLY.items())
        + ".",
    )
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
    _add_flags(post, POST_FLAGS)

    listing = commands.add_parser(
        "list",
        help="list messages, newest first",
        description="Print messages, newest first, one a line: time, id and text, with line "
        "breaks shown as ⏎. With --json, one JSON object a line, as `guestbook export` "
        "writes them.",
    )
    listing.add_argument(
        "--limit", type=int, default=20, help=f"how many (1-{MAX_PAGE}, default 20)"
    )
    listing.add_argument("--before", help="only messages older than this id")
    listing.add_argument(
        "--json", action="store_true", help='print JSON lines: {"id", "text", "created_at"}'
    )
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
    _add_flags(imp, IMPORT_FLAGS)
    _add_moderation(commands)
    return parser


_ID_HELP = "a message id such as 1764156357123-0"
_AUDITED = "Audited as done by `cli`; no token is needed, as it works on the store directly."


def _add_moderation(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    remove = commands.add_parser(
        "remove",
        help="remove a message (audited)",
        description="Remove the message ID from every frontend's page, API, legacy `get`, feed "
        "and live clients, and record who, when, why and its text in the audit. "
        f"{_AUDITED} Prints the id and text removed; an unknown id is an error.",
    )
    remove.add_argument("id", metavar="ID", help=f"the message, {_ID_HELP}")
    remove.add_argument("--reason", default="", help="why, for the audit")
    _add_flags(remove, STORE_FLAGS)

    queue = commands.add_parser(
        "queue",
        help="list held posts, oldest first",
        description="Print the posts held for review, oldest first, one a line: time, held id, "
        "reason (pre-moderation, links, blocked-pattern, honeypot or duplicate) and text, line "
        "breaks shown as ⏎. `guestbook approve ID` publishes one, `guestbook reject ID` "
        "drops it.",
    )
    queue.add_argument(
        "--limit",
        type=int,
        default=100,
        help=f"how many (1-{moderation.MAX_QUEUE_PAGE}, default 100)",
    )
    queue.add_argument("--after", metavar="ID", help="only posts held after this id")
    queue.add_argument(
        "--json",
        action="store_true",
        help='print JSON lines: {"id", "text", "created_at", "reason"}',
    )
    _add_flags(queue, STORE_FLAGS)

    approve = commands.add_parser(
        "approve",
        help="publish a held post (audited)",
        description="Publish the held post ID (the id `guestbook queue` shows) to everyone, "
        "live, with its original time. It gets a new message id, which is printed. "
        f"{_AUDITED}",
    )
    approve.add_argument("id", metavar="ID", help=f"the held post, {_ID_HELP}")
    _add_flags(approve, STORE_FLAGS)

    reject = commands.add_parser(
        "reject",
        help="drop a held post (audited)",
        description="Drop the held post ID (the id `guestbook queue` shows): it is never "
        f"published. {_AUDITED} Without --reason, the audit gives the reason it was held for.",
    )
    reject.add_argument("id", metavar="ID", help=f"the held post, {_ID_HELP}")
    reject.add_argument("--reason", default="", help="why, for the audit")
    _add_flags(reject, STORE_FLAGS)

    audit = commands.add_parser(
        "audit",
        help="show the moderation audit, newest first",
        description="Print the audit log, newest first, one entry a line: time, action "
        "(remove, approve, reject, hold), id, by whom (a moderator, `cli`, or `guestbook` "
        "for a post it held itself), reason and text, line breaks shown as ⏎.",
    )
    audit.add_argument(
        "--limit",
        type=int,
        default=20,
        help=f"how many (1-{moderation.MAX_AUDIT_PAGE}, default 20)",
    )
    audit.add_argument(
        "--before",
        metavar="ENTRY",
        help="only entries older than this audit entry (a full page names the next ENTRY)",
    )
    audit.add_argument(
        "--json",
        action="store_true",
        help='print JSON lines: {"at", "action", "id", "by", "reason", "text"}',
    )
    _add_flags(audit, STORE_FLAGS)

    block = commands.add_parser(
        "block",
        help="block, unblock or list spam patterns",
        description="A post containing a blocked pattern (a case-insensitive substring) is "
        "held for review instead of published; every frontend picks a change up within "
        "5 seconds.",
    )
    actions = block.add_subparsers(dest="block_action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="block a pattern",
        description="Hold every new post that contains PATTERN (case-insensitive, trimmed). "
        "Blocking a pattern that is blocked already changes nothing.",
    )
    add.add_argument("pattern", metavar="PATTERN", help="the text to block")
    _add_flags(add, STORE_FLAGS)
    unblock = actions.add_parser(
        "remove",
        help="unblock a pattern",
        description="Stop holding posts for PATTERN; a pattern that is not blocked is an error.",
    )
    unblock.add_argument("pattern", metavar="PATTERN", help="the blocked text")
    _add_flags(unblock, STORE_FLAGS)
    listing = actions.add_parser(
        "list",
        help="list blocked patterns",
        description="Print every blocked pattern, one a line, as it is compared: lower case.",
    )
    _add_flags(listing, STORE_FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k.isupper() and v is not None}

    def name(env: str) -> str:
        return _flag_name(env, overrides)

    try:
        settings = Settings.from_env({**os.environ, **overrides})
    except ConfigError as exc:
        print(
            f"guestbook: configuration error: {_name_flags(str(exc), overrides)}", file=sys.stderr
        )
        return 2
    try:
        if args.command == "serve":
            from .server import AddressInUse, serve

            try:
                serve(settings, settings.instance)
            except AddressInUse as exc:
                print(f"guestbook: {exc.describe(name)}", file=sys.stderr)
                return 1
            return 0
        command = COMMANDS[args.command]
        return _with_store(settings, lambda ctx: command(ctx, args))
    except ConfigError as exc:
        print(f"guestbook: {_name_flags(str(exc), overrides)}", file=sys.stderr)
        return 1
    except (EmbeddedError, GuestbookError) as exc:
        print(f"guestbook: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _flag_name(env: str, flagged: Collection[str]) -> str:
    """How an error calls a variable: with the flag the user typed, when it came from one."""
    flag = ENV_FLAGS.get(env)
    return f"{flag} ({env})" if flag is not None and env in flagged else env


def _name_flags(message: str, flagged: Collection[str]) -> str:
    """`message` with each variable set by a flag named as that flag: settings only know the
    environment variables, and the user may never have typed one."""
    for env in flagged:
        message = re.sub(rf"\b{re.escape(env)}\b", _flag_name(env, flagged), message, count=1)
    return message


def _failed_server(exc: StoreUnavailable) -> str:
    """The innermost reason: which server did not answer, without its password."""
    reason: BaseException = exc
    while isinstance(reason.__cause__, StoreUnavailable):
        reason = reason.__cause__
    return str(reason)


def _unreachable(exc: StoreUnavailable, settings: Settings, address: StoreAddress) -> str:
    if address.mode == "embedded":
        # "leader" and a socket path mean nothing to someone who never set up a store.
        return f"the store is unreachable: the embedded store in {settings.data_dir} did not answer"
    return f"the store is unreachable: {_failed_server(exc)}"


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

        try:
            return asyncio.run(go())
        except StoreUnavailable as exc:
            print(f"guestbook: {_unreachable(exc, settings, address)}", file=sys.stderr)
            return 1


@contextlib.asynccontextmanager
async def _context(settings: Settings, address: StoreAddress) -> AsyncIterator[Context]:
    store = open_store(settings, address, read_leader_first=True)
    try:
        await store.start()
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
        "sentinel": status.sentinel.as_dict() if status.sentinel else None,
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"store:     {mode}")
        if status.sentinel is not None:
            print(f"service:   {status.sentinel.service}")
            for s in status.sentinel.sentinels:
                names = f", names leader {s.leader}" if s.leader else ""
                print(f"sentinel:  {s.address}  {_reach(s.reachable)}{names}")
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
    page = await ctx.store.page(max(1, min(MAX_PAGE, args.limit)), args.before)
    for m in page.messages:
        if args.json:
            sys.stdout.write(_json_line(m))
        else:
            print(f"{m.created_at}  {m.id}  {one_line(m.text)}")
    if page.next:
        print(f"(older: guestbook list --before {page.next})", file=sys.stderr)
    return 0


# Line breaks become ⏎, so that each message is one line however long; other control
# characters (which a message cannot hold, but a store written by others might) are spelled
# out, so that no text can move the cursor or recolour the terminal.
_ONE_LINE = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code != 0x09},
    **dict.fromkeys(map(ord, "\n\u2028\u2029"), "⏎"),
}


def one_line(text: str) -> str:
    """A message's text as one line of a terminal, every character of it kept."""
    return text.translate(_ONE_LINE)


def _json_line(message: Message) -> str:
    return json.dumps(message.as_dict(), ensure_ascii=False) + "\n"


async def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    for message in await ctx.store.iter_all():
        sys.stdout.write(_json_line(message))
    return 0


async def cmd_import(ctx: Context, args: argparse.Namespace) -> int:
    if args.file == "-":
        content = sys.stdin.read()
    else:
        try:
            content = await asyncio.to_thread(Path(args.file).read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"guestbook: cannot read {args.file}: {exc}", file=sys.stderr)
            return 1
    entries = parse_import(content, ctx.settings.max_message_chars)
    added = 0
    for entry in entries:
        if await ctx.store.import_message(entry.key, entry.text, entry.created_ms, entry.wanted_id):
            added += 1
    print(f"imported {added} new message(s), {len(entries) - added} already present")
    return 0


# --- moderation ------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"guestbook: {message}", file=sys.stderr)
    return 1


async def cmd_remove(ctx: Context, args: argparse.Namespace) -> int:
    removed = await moderation.remove(
        ctx.store, args.id, by=moderation.CLI_ACTOR, reason=args.reason.strip()
    )
    if removed is None:
        return _fail(f"no message {args.id}: it was never posted or is removed already")
    print(f"removed {removed.id}: {one_line(removed.text)}")
    return 0


async def cmd_queue(ctx: Context, args: argparse.Namespace) -> int:
    limit = max(1, min(moderation.MAX_QUEUE_PAGE, args.limit))
    posts = await moderation.held(ctx.store, limit, args.after)
    for p in posts:
        if args.json:
            sys.stdout.write(json.dumps(p.as_dict(), ensure_ascii=False) + "\n")
        else:
            print(f"{p.created_at}  {p.id}  {p.reason:<15}  {one_line(p.text)}")
    # Asked only when the page is full: one more round trip, but no hint that leads nowhere.
    if len(posts) == limit and await moderation.held(ctx.store, 1, posts[-1].id):
        print(f"(more: guestbook queue --after {posts[-1].id})", file=sys.stderr)
    return 0


async def cmd_approve(ctx: Context, args: argparse.Namespace) -> int:
    message = await moderation.approve(ctx.store, args.id, by=moderation.CLI_ACTOR)
    if message is None:
        return _fail(_no_held_post(args.id))
    print(message.id)
    return 0


async def cmd_reject(ctx: Context, args: argparse.Namespace) -> int:
    post = await moderation.reject(
        ctx.store, args.id, by=moderation.CLI_ACTOR, reason=args.reason.strip()
    )
    if post is None:
        return _fail(_no_held_post(args.id))
    print(f"rejected {post.id}: {one_line(post.text)}")
    return 0


def _no_held_post(held_id: str) -> str:
    return f"no held post {held_id}: `guestbook queue` lists the posts waiting for review"


async def cmd_audit(ctx: Context, args: argparse.Namespace) -> int:
    limit = max(1, min(moderation.MAX_AUDIT_PAGE, args.limit))
    entries = await moderation.audit(ctx.store, limit, args.before)
    for e in entries:
        if args.json:
            sys.stdout.write(json.dumps(e.as_dict(), ensure_ascii=False) + "\n")
        else:
            reason = one_line(e.reason) or "-"
            print(
                f"{e.at}  {e.action:<7}  {e.id}  by: {one_line(e.by)}  reason: {reason}  "
                f"{one_line(e.text)}"
            )
    if len(entries) == limit and await moderation.audit(ctx.store, 1, entries[-1].entry_id):
        print(f"(older: guestbook audit --before {entries[-1].entry_id})", file=sys.stderr)
    return 0


async def cmd_block(ctx: Context, args: argparse.Namespace) -> int:
    if args.block_action == "list":
        for pattern in sorted(await moderation.blocked_patterns(ctx.store)):
            print(one_line(pattern))
        return 0
    pattern = moderation.normalise_pattern(args.pattern)
    if args.block_action == "add":
        added = await moderation.block_add(ctx.store, pattern)
        print(f"blocked {pattern!r}" if added else f"{pattern!r} was blocked already")
        return 0
    if not await moderation.block_remove(ctx.store, pattern):
        return _fail(f"{pattern!r} is not blocked: `guestbook block list` shows what is")
    print(f"unblocked {pattern!r}")
    return 0


COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "post": cmd_post,
    "list": cmd_list,
    "export": cmd_export,
    "import": cmd_import,
    "remove": cmd_remove,
    "queue": cmd_queue,
    "approve": cmd_approve,
    "reject": cmd_reject,
    "audit": cmd_audit,
    "block": cmd_block,
}
