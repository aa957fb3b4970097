"""The one-match check of short values says exactly what the full VR checks say, and both catch faults."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.deid import values
from pipeline.deid.values import nonconforming

TEXT_VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "LO", "PN", "SH", "UC", "UR", "LT", "ST",
            "UT"]
# Bytes at the edges of every repertoire: digits, signs, capitals, a lower-case letter, the delimiter,
# padding and control bytes (ESC and the line breaks long text allows).
ALPHABET = b"019.+-:EeDWMYAZ_ a\\\0\x01\x09\x0a\x0c\x0d\x1b\x7f\xc3"


def full_checks(vr: str, raw: bytes) -> tuple[bool, str] | None:
    saved = values.QUICK_LENGTH
    values.QUICK_LENGTH = -1  # every value takes the full checks
    try:
        return nonconforming(vr, memoryview(raw))
    finally:
        values.QUICK_LENGTH = saved


# Mostly bytes every repertoire holds, so that values reach and pass each VR's longest length.
CHARACTERS = [b"0123456789", b"0123456789.", b"ABCXYZ019 _", ALPHABET]
value_lists = st.sampled_from(CHARACTERS).flatmap(
    lambda chars: st.lists(st.lists(st.sampled_from(chars), max_size=70).map(bytes), min_size=1, max_size=4)
).map(b"\\".join)


@settings(max_examples=3000, deadline=None)
@given(vr=st.sampled_from(TEXT_VRS), raw=value_lists, pad=st.sampled_from([b"", b" ", b"\0", b" \0"]))
def test_quick_match_agrees_with_full_checks(vr: str, raw: bytes, pad: bytes) -> None:
    assert nonconforming(vr, memoryview(raw + pad)) == full_checks(vr, raw + pad)


@pytest.mark.parametrize(("vr", "raw", "expected"), [
    ("DS", b"1.5\\-2.25e3\\0 ", None),
    ("DS", b"1.5\\12345678901234567", (False, "a DS value longer than 16 bytes or malformed")),
    ("CS", b"ORIGINAL\\PRIMARY", None),
    ("CS", b"original", (False, "a CS value outside its VR's repertoire")),
    ("UI", b"1.2.840.10008.1.2\0", None),
    ("UI", b"1.2.3\x08\x00", (True, "control byte 0x08 in a UI value")),
    ("AE", b"A\\" + b"B" * 16, None),
    ("AE", b"B" * 17, (False, "a AE value longer than 16 bytes or malformed")),
    ("LO", b"Name\x02\x00", (True, "control byte 0x02 in a LO value")),
    ("LT", b"line\r\nline", None),
    ("SH", b"line\r\nline", (True, "control byte 0x0d in a SH value")),
])
def test_both_paths_accept_and_refuse(vr: str, raw: bytes, expected) -> None:
    assert nonconforming(vr, memoryview(raw)) == expected == full_checks(vr, raw)


def test_long_values_take_the_full_checks() -> None:
    """Contour data: thousands of numbers in one value, each checked for its length."""
    numbers = b"\\".join(b"%.6f" % (i * 1.37) for i in range(20000))
    assert nonconforming("DS", numbers) is None
    assert nonconforming("DS", numbers + b"\\1.00000000000000001")[0] is False
    assert nonconforming("DS", numbers[:-8] + b"\x00\x10\x00\x20" + numbers[-4:])[0] is True
