"""What text is acceptable, and how ids and times read."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from guestbook.errors import InvalidCursor, InvalidMessage
from guestbook.messages import clean_text, iso_from_ms, ms_from_iso, parse_id


def test_text_is_trimmed_and_crlf_becomes_lf() -> None:
    assert clean_text("  a\r\nb\tc  ", 500) == "a\nb\tc"


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\r", "\x7f", "\x85", "\ud800"])
def test_control_characters_other_than_newline_and_tab_are_refused(char: str) -> None:
    with pytest.raises(InvalidMessage):
        clean_text(f"a{char}b", 500)


def test_exactly_the_control_characters_and_lone_surrogates_are_refused_of_all_code_points() -> (
    None
):
    """Every code point, against the rule in Unicode's own terms: category Cc other than
    newline and tab is a control character, category Cs an unpaired surrogate."""
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        try:
            clean_text(f"a{char}b", 500)
        except InvalidMessage as refused:
            said = str(refused)
        else:
            said = ""
        if category == "Cc" and char not in "\n\t":
            assert f"control character (U+{code:04X})" in said, hex(code)
        elif category == "Cs":
            assert "unpaired surrogate" in said, hex(code)
        else:
            assert said == "", hex(code)


def test_length_counts_characters_not_bytes() -> None:
    assert clean_text("é" * 500, 500) == "é" * 500
    with pytest.raises(InvalidMessage, match="501 characters"):
        clean_text("é" * 501, 500)


@pytest.mark.parametrize(
    "value", ["", "1", "a-1", "1-", "-1", "1-2-3", "1 -2", "99999999999999999999-0"]
)
def test_malformed_ids_are_refused(value: str) -> None:
    with pytest.raises(InvalidCursor):
        parse_id(value)


def test_times_are_utc_with_milliseconds() -> None:
    assert iso_from_ms(1764156357123) == "2025-11-26T11:25:57.123Z"
    assert ms_from_iso("2025-11-26T11:25:57.123Z") == 1764156357123
