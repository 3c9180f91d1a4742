"""What happens to a post, whichever door it came in by (the API, the page's form, the legacy
`set`): its text checked, its client named, the spam checks that need no store (honeypot,
links, blocked patterns, pre-moderation), then one store round trip that counts the client
against the shared rate limit, finds duplicates and replays, and publishes or holds it.

A post judged as spam is held, never dropped: a false positive is one `approve` away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

from starlette.requests import Request
from starlette.responses import Response

from . import moderation
from .errors import Refused
from .messages import clean_text, is_id
from .state import AppState
from .store import PostResult

Network = IPv4Network | IPv6Network

# The poster's own held posts, so their page can show them as awaiting approval: the newest
# few, for a day (a moderator usually decides sooner; after that the page need not ask).
HELD_COOKIE = "gb_held"
HELD_MAX_AGE = 86400
HELD_KEPT = 5
# The block list is asked for at most this often per frontend: `guestbook block add` reaches
# every frontend within the contract's 5 s.
BLOCKLIST_TTL = 2.0
# An Idempotency-Key is the client's own token: printable ASCII, of a sane length, bare or
# quoted as the IETF draft's structured-field string (the quotes are not part of the key).
MAX_IDEMPOTENCY_KEY = 255
# What `idempotency_key` takes, for the OpenAPI document: quotes, then the key, whose first
# and last characters are neither space nor quote (HTTP trims the spaces around a header
# value; the quotes are stripped), then quotes.
_KEY_EDGE = r"[\x21\x23-\x7e]"
IDEMPOTENCY_KEY_PATTERN = (
    f'^"*{_KEY_EDGE}(?:[\\x20-\\x7e]{{0,{MAX_IDEMPOTENCY_KEY - 2}}}{_KEY_EDGE})?"*$'
)


def client_address(request: Request, trusted: Sequence[Network]) -> str:
    """The socket peer; or, when the peer is a trusted proxy, the `X-Forwarded-For` hop just
    before the first trusted proxy (read from the right: the hops a client wrote itself, on the
    left, are not believed)."""
    peer = request.client.host if request.client else "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [
        hop.strip()
        for value in request.headers.getlist("x-forwarded-for")
        for hop in value.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


async def _blocked(state: AppState) -> frozenset[str]:
    """The block list, asked for at most every `BLOCKLIST_TTL`: the posts that find it due
    share one read of it (under load, every post in flight at that moment used to ask)."""
    if time.monotonic() < state.blocklist_until:
        return state.blocklist
    if state.blocklist_read is None:
        state.blocklist_read = asyncio.ensure_future(_read_blocklist(state))
    # Shielded: a post whose client leaves does not cancel the read the others wait for.
    return await asyncio.shield(state.blocklist_read)


async def _read_blocklist(state: AppState) -> frozenset[str]:
    try:
        state.blocklist = await moderation.blocked_patterns(state.store, on_leader=True)
        state.blocklist_until = time.monotonic() + BLOCKLIST_TTL
        return state.blocklist
    finally:
        state.blocklist_read = None


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip().strip('"')
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not (key.isascii() and key.isprintable()):
        raise Refused(
            400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters."
        )
    return key


async def post(
    state: AppState,
    request: Request,
    raw_text: str,
    *,
    honeypot: str | None = None,
    key: str | None = None,
) -> PostResult:
    """Check, judge and store one post; raises what `problems.problem_for` explains."""
    settings = state.settings
    text = clean_text(raw_text, settings.max_message_chars)
    reason = moderation.hold_reason(
        text,
        honeypot=honeypot,
        max_links=settings.max_links,
        blocked=await _blocked(state),
        pre_moderation=settings.moderation == "pre",
    )
    result = await state.store.submit(
        text,
        client_address(request, settings.trusted_proxies),
        hold_reason=reason,
        rate_limit=settings.rate_limit,
        idempotency_key=key,
    )
    if result.held:
        state.metrics.messages_held.inc()
    elif not result.replayed:
        state.metrics.messages_posted.inc()
    return result


def remember_held(request: Request, response: Response, held_id: str) -> None:
    """Let the poster's page show their held post, marked as awaiting approval."""
    kept = [i for i in held_ids(request.cookies) if i != held_id][-(HELD_KEPT - 1) :]
    response.set_cookie(
        HELD_COOKIE,
        ".".join([*kept, held_id]),
        max_age=HELD_MAX_AGE,
        httponly=True,
        samesite="lax",
    )


def held_ids(cookies: Mapping[str, str]) -> list[str]:
    value = cookies.get(HELD_COOKIE, "")
    return [i for i in value.split(".") if is_id(i)][-HELD_KEPT:]
