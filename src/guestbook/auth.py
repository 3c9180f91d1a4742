"""Who may moderate: the bearer of GUESTBOOK_ADMIN_TOKEN.

The API takes `Authorization: Bearer <token>`; the `/admin` page signs in once with the token
and then holds a session cookie (HttpOnly, SameSite=Strict, expiring) that is an HMAC of its
expiry under the token, so no session is stored anywhere and rotating the token ends them all.
Its forms carry a CSRF token derived the same way. Comparisons are constant-time; the token is
never logged, shown or answered.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from starlette.requests import Request
from starlette.responses import Response

from .errors import Refused
from .settings import Settings

# The name moderation records give whoever holds the token (the command line is `cli`).
MODERATOR = "moderator"
SESSION_COOKIE = "gb_admin"
SESSION_SECONDS = 8 * 3600
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="guestbook moderation"'}


def _token(settings: Settings) -> bytes:
    if settings.admin_token is None:
        raise Refused(
            403,
            "Moderation over HTTP is off: no GUESTBOOK_ADMIN_TOKEN is configured. "
            "Use the guestbook command line.",
        )
    return settings.admin_token.get_secret_value().encode()


def _sign(token: bytes, purpose: str, value: str) -> str:
    return hmac.new(token, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()


def token_matches(settings: Settings, offered: str) -> bool:
    return hmac.compare_digest(offered.encode(), _token(settings))


def require_bearer(request: Request, settings: Settings) -> str:
    """The moderator's name for an API request that carries the token, else `Refused`
    (403 when no token is configured, 401 with a challenge when it is missing or wrong)."""
    _token(settings)
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not offered.strip():
        raise Refused(401, "Moderation needs the moderators' token as a Bearer token.", _CHALLENGE)
    if not token_matches(settings, offered.strip()):
        raise Refused(401, "That token is not the moderators' token.", _CHALLENGE)
    return MODERATOR


def start_session(response: Response, settings: Settings, now: float | None = None) -> None:
    expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
    value = f"{expires}.{_sign(_token(settings), 'session', str(expires))}"
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/admin",
        httponly=True,
        samesite="strict",
    )


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/admin", httponly=True, samesite="strict")


def session(request: Request, settings: Settings) -> str | None:
    """The session's expiry stamp when the request carries a valid, unexpired session."""
    expires, _, signature = request.cookies.get(SESSION_COOKIE, "").partition(".")
    if not expires.isascii() or not expires.isdigit() or int(expires) < time.time():
        return None
    expected = _sign(_token(settings), "session", expires)
    return expires if hmac.compare_digest(signature.encode(), expected.encode()) else None


def csrf_token(settings: Settings, session_stamp: str) -> str:
    return _sign(_token(settings), "csrf", session_stamp)


def check_csrf(settings: Settings, session_stamp: str, offered: str | None) -> None:
    if not offered or not hmac.compare_digest(
        offered.encode(), csrf_token(settings, session_stamp).encode()
    ):
        raise Refused(403, "The form has expired or did not come from this page; reload it.")
