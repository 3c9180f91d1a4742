"""The moderators' page, `/admin`: sign in once with the moderators' token, then remove
messages, work the queue of held posts and read the audit log.

Plain HTML forms that work without JavaScript; each post is answered `303` back to the page
(post/redirect/get) with what was done named in the query string, as a code the page turns into
words, never as text it would echo. A form post passes three checks: the `Origin` header, when
sent, must name this host; the session cookie must be valid (else `303` to the sign-in form);
the form's CSRF token must be this session's. The session and the CSRF token are `auth.py`'s.

It must never show, log or answer the token itself, nor a form field it was sent.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import moderation
from .auth import (
    _CHALLENGE,
    MODERATOR,
    check_csrf,
    csrf_token,
    end_session,
    session,
    start_session,
    token_matches,
)
from .bodies import read_body
from .errors import Refused
from .messages import is_id
from .moderation_api import MAX_REASON
from .settings import Settings
from .state import AppState
from .templates import template

router = APIRouter(include_in_schema=False)

PAGE = "/admin"
# What the page shows: enough to catch a flood, few enough to read on a phone.
NEWEST_MESSAGES = 50
QUEUE_SHOWN = 100
AUDIT_SHOWN = 50
FORM = "application/x-www-form-urlencoded"
# A moderator's page is theirs alone: no cache, shared or private, may keep it.
_NO_STORE = {"Cache-Control": "no-store"}

# What each outcome named in `?done=` reads as; `{id}` is the `?id=` when it is an id.
_DONE = {
    "signed-in": "Signed in.",
    "signed-out": "Signed out.",
    "expired": "Your moderator session has ended. Sign in again.",
    "removed": "Removed message {id}.",
    "missing": "Message {id} was removed already.",
    "approved": "Approved: the post is published as message {id}.",
    "rejected": "Rejected held post {id}.",
    "decided": "Held post {id} was approved or rejected already.",
}

# Compiled on first use (the environment keeps them), not at import: most frontends never
# show the moderators' page, and its templates cost more than half a megabyte.
_DASHBOARD = "admin.html"
_SIGNIN = "admin_signin.html"


def _require_token(settings: Settings) -> None:
    if settings.admin_token is None:
        raise Refused(
            403,
            "Moderation over the web is off: no GUESTBOOK_ADMIN_TOKEN is configured. "
            "Moderate with the guestbook command line instead: "
            "guestbook queue, approve, reject, remove and audit.",
        )


def _check_origin(request: Request) -> None:
    """Refuse a form posted from another site. Only the host is compared: behind a proxy that
    ends TLS the scheme the browser used is not the one seen here. `Origin: null` (a sandboxed
    or privacy-stripped sender) is refused too: the page itself always sends its origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not every client sends one; the session and CSRF token still hold
    host = request.headers.get("host", "").lower()
    if not host or urlsplit(origin).netloc.lower() != host:
        raise Refused(
            403, "This form was sent from another site; moderation takes forms from this page only."
        )


async def _fields(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the last value of each), within `read_body`'s bounds."""
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != FORM:
        raise Refused(415, f"Send the form as {FORM}.")
    body = await read_body(request)
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "The form is not valid UTF-8.") from None
    return {name: values[-1] for name, values in parsed.items()}


async def _moderator_form(request: Request) -> dict[str, str] | None:
    """The fields of a moderator's form post, or None without a valid session (the caller
    sends them to sign in). `Refused` (403) with no token configured, for a post from another
    site, and for a missing or wrong CSRF token."""
    settings = request.state.app.settings
    _require_token(settings)
    _check_origin(request)
    stamp = session(request, settings)
    if stamp is None:
        return None
    fields = await _fields(request)
    check_csrf(settings, stamp, fields.get("csrf"))
    return fields


def _reason(fields: dict[str, str]) -> str:
    reason = fields.get("reason", "").strip()
    if len(reason) > MAX_REASON:
        raise Refused(422, f"A reason is at most {MAX_REASON} characters.")
    return reason


def _back(done: str, message_id: str | None = None) -> RedirectResponse:
    query = {"done": done, **({"id": message_id} if message_id else {})}
    return RedirectResponse(f"{PAGE}?{urlencode(query)}", status_code=303)


def _notice(request: Request) -> tuple[str | None, str | None]:
    """What the `?done=` of a redirect says happened, and the id it names."""
    params = request.query_params
    message = _DONE.get(params.get("done", ""))
    if message is None:
        return None, None
    named = params.get("id", "")
    if "{id}" not in message:
        return message, None
    if not is_id(named):
        return None, None
    return message.format(id=named), named


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**_NO_STORE, **(headers or {})})


# --- the page ------------------------------------------------------------------------------


@router.get(PAGE)
async def admin_page(request: Request) -> Response:
    """The sign-in form, or for a signed-in moderator the newest messages, the queue and the
    audit log, each action a form."""
    state: AppState = request.state.app
    _require_token(state.settings)
    notice, named_id = _notice(request)
    stamp = session(request, state.settings)
    if stamp is None:
        return _html(template(_SIGNIN).render(notice=notice))
    page = await state.store.page(NEWEST_MESSAGES)
    messages = page.messages
    if request.query_params.get("done") == "removed":
        # The newest page is read from a follower, which may not have the removal yet: the
        # moderator who just removed a message must not see it still there.
        messages = [m for m in messages if m.id != named_id]
    held = await moderation.held(state.store, QUEUE_SHOWN)
    entries = await moderation.audit(state.store, AUDIT_SHOWN)
    body = template(_DASHBOARD).render(
        notice=notice,
        csrf=csrf_token(state.settings, stamp),
        messages=messages,
        held=held,
        audit=entries,
        max_reason=MAX_REASON,
        newest_shown=NEWEST_MESSAGES,
        instance=state.instance,
    )
    return _html(body)


# --- signing in and out --------------------------------------------------------------------


@router.post(f"{PAGE}/session")
async def sign_in(request: Request) -> Response:
    """Trade the token for a session cookie; a wrong one is the form again, `401`."""
    settings = request.state.app.settings
    _require_token(settings)
    _check_origin(request)
    fields = await _fields(request)
    offered = fields.get("token", "").strip()
    if not offered or not token_matches(settings, offered):
        body = template(_SIGNIN).render(error="That is not the moderators' token.")
        return _html(body, 401, _CHALLENGE)
    response = _back("signed-in")
    start_session(response, settings)
    return response


@router.post(f"{PAGE}/session/end")
async def sign_out(request: Request) -> Response:
    fields = await _moderator_form(request)
    response = _back("expired" if fields is None else "signed-out")
    end_session(response)
    return response


# --- moderating ----------------------------------------------------------------------------


@router.post(f"{PAGE}/remove")
async def remove(request: Request) -> Response:
    """Remove a message everywhere, audited with its text and the reason given."""
    state: AppState = request.state.app
    fields = await _moderator_form(request)
    if fields is None:
        return _back("expired")
    message_id = fields.get("id", "")
    removed = await moderation.remove(state.store, message_id, by=MODERATOR, reason=_reason(fields))
    if removed is None:
        return _back("missing", message_id)
    state.feed.drop_now(removed.id)
    return _back("removed", removed.id)


@router.post(f"{PAGE}/approve")
async def approve(request: Request) -> Response:
    """Publish a held post (with a new id), audited."""
    state: AppState = request.state.app
    fields = await _moderator_form(request)
    if fields is None:
        return _back("expired")
    held_id = fields.get("id", "")
    message = await moderation.approve(state.store, held_id, by=MODERATOR)
    if message is None:
        return _back("decided", held_id)
    return _back("approved", message.id)


@router.post(f"{PAGE}/reject")
async def reject(request: Request) -> Response:
    """Drop a held post, audited with the reason given (or the one it was held for)."""
    state: AppState = request.state.app
    fields = await _moderator_form(request)
    if fields is None:
        return _back("expired")
    held_id = fields.get("id", "")
    dropped = await moderation.reject(state.store, held_id, by=MODERATOR, reason=_reason(fields))
    if dropped is None:
        return _back("decided", held_id)
    return _back("rejected", dropped.id)
