"""What `guestbook import` reads: its own export (JSON lines) or the original PHP guestbook's
comma-joined `messages` value, turned into entries the store can import once each.

Pure functions only: every entry of a file is checked here before the store sees any of
them, so an invalid file imports nothing. Nothing here touches the store or the terminal.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from .errors import GuestbookError, InvalidMessage
from .messages import clean_text, ms_from_iso, parse_id


@dataclass(frozen=True)
class ImportEntry:
    """One message to import. `key` names its source, so a second import of it adds nothing;
    `wanted_id` is the id it had in the guestbook it was exported from (None from PHP)."""

    key: str
    text: str
    created_ms: int
    wanted_id: str | None


def parse_import(content: str, max_chars: int) -> list[ImportEntry]:
    """Entries of an export (JSON lines) or of the PHP guestbook's comma-joined value.

    Raises `InvalidMessage` naming the first bad line or entry.
    """
    stripped = content.strip()
    if not stripped:
        return []
    if stripped.startswith("{"):
        # JSON lines end at "\n" only: `splitlines` would also cut at U+2028, U+2029 and
        # others, which a text may hold and the export writes unescaped.
        lines = [line for line in stripped.split("\n") if line.strip()]
        try:
            first = json.loads(lines[0])
        except json.JSONDecodeError as exc:
            raise InvalidMessage(f"not JSON lines: {exc}") from None
        if isinstance(first, dict) and set(first) == {"data"} and len(lines) == 1:
            return _php_entries(str(first["data"]), max_chars)
        return _jsonl_entries(lines, max_chars)
    return _php_entries(stripped, max_chars)


def _jsonl_entries(lines: list[str], max_chars: int) -> list[ImportEntry]:
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            ms, seq = parse_id(str(record["id"]), "id")
            created_ms = ms_from_iso(str(record["created_at"]))
            text = clean_text(str(record["text"]), max_chars)
        except (ValueError, KeyError, TypeError, GuestbookError) as exc:
            raise InvalidMessage(f"line {number}: not a guestbook export entry ({exc})") from None
        # The store compares ids as digit strings, so `0012-0` must arrive as `12-0`.
        message_id = f"{ms}-{seq}"
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
