"""What a message is, which texts are acceptable, and how stream ids read.

Pure functions only: no I/O, so the web, the CLI and the store all check text the same way.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import InvalidCursor, InvalidMessage


def _at_most(limit: str) -> str:
    """A regex for the decimal strings of up to `len(limit)` digits (leading zeros allowed)
    whose value is at most `limit`: shorter ones, or the same length and digit by digit no
    greater, as a range check reads."""
    width = len(limit)
    branches = [f"[0-9]{{1,{width - 1}}}"]
    for i, digit in enumerate(limit):
        if digit != "0":
            rest = width - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            branches.append(f"{limit[:i]}[0-{int(digit) - 1}]{tail}")
    branches.append(limit)
    return "(?:" + "|".join(branches) + ")"


# A stream id: `<milliseconds>-<sequence>`, each part an unsigned 64-bit number in ASCII
# digits (`\d` would admit other scripts' digits, and Redis refuses both those and numbers
# past 2**64 - 1). The one definition: routes, the fast path, cookies, the OpenAPI document
# and the store all use it.
_U64_DIGITS = _at_most(str(2**64 - 1))
ID_PATTERN = f"^{_U64_DIGITS}-{_U64_DIGITS}$"
_STREAM_ID = re.compile(r"\A([0-9]{1,20})-([0-9]{1,20})\Z")
_U64 = 2**64
# The page sizes the API allows, and its default.
MAX_PAGE = 200
DEFAULT_PAGE = 50


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    text: str
    created_at: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "text": self.text, "created_at": self.created_at}


# What a message may not hold: Unicode's control characters (category Cc, which is exactly
# U+0000-U+001F and U+007F-U+009F) but newline and tab, and lone surrogates (category Cs).
# One search in C: asking each character's category cost a 450-character post 31 µs.
_FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(raw: str, max_chars: int) -> str:
    """The text as it will be stored, or `InvalidMessage` saying what is wrong with it.

    Browsers send CR LF for a line break; it becomes LF so that the contract's rule (control
    characters other than newline and tab are forbidden) does not reject ordinary form input.
    """
    text = raw.replace("\r\n", "\n").strip()
    if not text:
        raise InvalidMessage("The message is empty.")
    if len(text) > max_chars:
        raise InvalidMessage(
            f"The message is {len(text)} characters long; the limit is {max_chars}."
        )
    forbidden = _FORBIDDEN.search(text)
    if forbidden is not None:
        char = forbidden.group()
        if unicodedata.category(char) == "Cs":
            raise InvalidMessage("The message contains an unpaired surrogate, which is not text.")
        raise InvalidMessage(
            f"The message contains a control character (U+{ord(char):04X}); "
            "only newline and tab are allowed."
        )
    return text


def parse_id(value: str, name: str = "before") -> tuple[int, int]:
    """A stream id as (milliseconds, sequence), or `InvalidCursor` naming the parameter."""
    match = _STREAM_ID.match(value)
    if match is None:
        raise InvalidCursor(f"'{name}' must be a message id such as 1764156357123-0.")
    ms, seq = int(match[1]), int(match[2])
    if ms >= _U64 or seq >= _U64:
        raise InvalidCursor(f"'{name}' is out of range.")
    return ms, seq


def is_id(value: str) -> bool:
    """True for a well-formed stream id within range."""
    try:
        parse_id(value)
    except InvalidCursor:
        return False
    return True


def id_key(value: str) -> tuple[int, int]:
    """Sort key for ids known to be valid (they came from the store)."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def iso_from_ms(ms: int) -> str:
    """`2026-11-26T11:25:57.123Z`: UTC, milliseconds, as the contract shows."""
    return f"{_iso_second(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    # Every message of a page needs this; neighbours share their second, and strftime is
    # the most expensive step of turning a stream entry into a message.
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def ms_from_iso(value: str) -> int:
    """Milliseconds since the epoch from an ISO 8601 time (as `iso_from_ms` writes it)."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
