"""Replacement values that are valid for their VR: dummies, empties and shifted dates."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

DUMMY_TEXT = "ANONYMIZED"
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
# Free text that, when it sits inside a sequence replaced by a dummy, is assumed to identify.
FREE_TEXT_VRS = TEXT_VRS - {"CS"}
DATE_VRS = frozenset({"DA", "DT"})
SPACE_PADDED = TEXT_VRS | {"AS", "DA", "DS", "DT", "IS", "TM"}  # odd lengths padded with a space
_DUMMIES: dict[str, Any] = {
    "AS": "000D", "DA": "19000101", "DT": "19000101000000", "TM": "000000",
    "DS": "0", "IS": "0", "FL": 0.0, "FD": 0.0, "AT": 0,
    **dict.fromkeys(("US", "SS", "UL", "SL", "UV", "SV"), 0),
    **dict.fromkeys(("OB", "OD", "OF", "OL", "OV", "OW", "UN"), bytes(8)),
}
_BINARY = frozenset({"FL", "FD", "AT", "US", "SS", "UL", "SL", "UV", "SV",
                     "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# A DT value: the date, then at most a time of day and a UTC offset (PS3.5 Table 6.2-1); anything
# else after the date (bytes a wrong length swallowed) makes it unparseable, never carried along.
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?((?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?(?:[+-]\d{4})?)$")


def concrete_vr(vr: str) -> str:
    """One VR for an ambiguous dictionary entry such as 'US or SS' or 'OB or OW'."""
    return vr.split(" or ")[0]


def text_dummies() -> list[str]:
    """The text dummies the engine writes, which say nothing and so are never a leak."""
    return [DUMMY_TEXT, *(v for v in _DUMMIES.values() if isinstance(v, str))]


def dummy(vr: str) -> Any:
    """A non-empty value that is valid for the VR and says nothing about anyone."""
    return _DUMMIES.get(vr, DUMMY_TEXT)


def empty(vr: str) -> Any:
    """A zero-length value of the VR's Python type."""
    return None if vr in _BINARY else ""


def shift_date(value: str, days: int) -> str:
    """Shift one DA value (or a DA range) by whole days; anything unparseable becomes empty."""
    if "-" in value:
        return "-".join(shift_date(part, days) if part else "" for part in value.split("-", 1))
    if not re.fullmatch(r"\d{8}", value):
        return ""
    try:
        moved = date(int(value[:4]), int(value[4:6]), int(value[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return moved.strftime("%Y%m%d").zfill(8)


def shift_datetime(value: str, days: int) -> str:
    """Shift the date of a DT value, keeping its precision, time of day and UTC offset."""
    match = _DT.match(value)
    if not match:
        return ""
    year, month, day, rest = match.groups()
    shifted = shift_date(f"{year}{month or '01'}{day or '01'}", days)
    if not shifted:
        return ""
    return shifted[: 4 + (2 if month else 0) + (2 if day else 0)] + rest


def shift(vr: str, value: str, days: int) -> str:
    """Shift every value of a multi-valued DA or DT string."""
    one = shift_date if vr == "DA" else shift_datetime
    return "\\".join(one(v.strip(), days) for v in value.split("\\"))



# PS3.5 6.2: the characters each string VR may hold (default repertoire), and one value's length.
_REPERTOIRE = {
    "AE": (bytes(range(0x20, 0x7F)), 16), "AS": (b"0123456789DWMY", 4),
    "CS": (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _", 16), "DA": (b"0123456789.- ", 18),
    "DS": (b"0123456789+-.Ee ", 16), "DT": (b"0123456789.+- ", 54), "IS": (b"0123456789+- ", 12),
    "TM": (b"0123456789.:- ", 28), "UI": (b"0123456789. ", 64),
}
_AGE = re.compile(rb"(?:\d{3}[DWMY])?(?:\\(?:\d{3}[DWMY])?)*")
# Control bytes no charset's text holds, save ESC (ISO 2022) and CR LF FF TAB in long text.
_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1a\x1c-\x1f]")
_LONG_TEXT_CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_TEXT = {**dict.fromkeys(("LO", "PN", "SH", "UC", "UR", *_REPERTOIRE), _CONTROLS),
         **dict.fromkeys(("LT", "ST", "UT"), _LONG_TEXT_CONTROLS)}
# Each repertoire VR's bytes mapped to b"a" (allowed), b"\\" (a value delimiter) or b"\0" (outside it),
# so one translate and two substring searches check a whole value list at C speed: no byte outside
# the repertoire, no run of allowed bytes longer than one value may be.
_CLASSES = {vr: bytes(b if b == 0x5C else 0x61 if b in allowed else 0 for b in range(256))
            for vr, (allowed, _) in _REPERTOIRE.items()}
_TOO_LONG = {vr: b"a" * (longest + 1) for vr, (_, longest) in _REPERTOIRE.items()}
# One match that says a short value conforms, read in place (no copy): the common case. A value it
# does not match, or a longer one (contour data), goes through the checks below, which say why.
_PAD = rb"[\0 ]*"
_CONFORMING = {
    **{vr: re.compile(rb"%s(?:\\%s)*%s" % (value, value, _PAD))
       for vr, (allowed, longest) in _REPERTOIRE.items() if vr != "AS"
       for value in [rb"[%s]{0,%d}" % (re.escape(allowed), longest)]},
    **{vr: re.compile(rb"[^%s]*%s" % (controls.pattern[1:-1], _PAD)) for vr, controls in _TEXT.items()
       if vr not in _REPERTOIRE},
}
QUICK_LENGTH = 256
_SIZES = {"AT": 4, "FL": 4, "FD": 8, "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2, "SL": 4, "SS": 2,
          "SV": 8, "UL": 4, "US": 2, "UV": 8}


def nonconforming(vr: str, raw: bytes | memoryview, most: int | None = None) -> tuple[bool, str] | None:
    """Why a kept value is invalid for its VR (PS3.5 6.2), and whether that breaks the structure.

    Headers swallowed into a value (a length enlarged, a VR flipped) show as control bytes in text
    or as a size no multiple of a binary VR's unit: (True, why), and the object is refused, as it
    is for a UID that is no UID. Other faults, a value too long or outside its repertoire, or more
    binary values than the attribute's multiplicity `most` allows, give (False, why): the value is
    removed. None: it conforms. `why` never quotes the value.
    """
    size = _SIZES.get(vr)
    if size:
        if len(raw) % size:
            return True, f"{len(raw)} bytes is no multiple of {vr}'s {size}"
        if most is not None and vr[0] != "O" and len(raw) > most * size:  # OB..OV: one value
            return False, f"{len(raw) // size} values where at most {most} may be"
        return None
    controls = _TEXT.get(vr)
    if controls is None:
        return None
    quick = _CONFORMING.get(vr)
    if quick is not None and len(raw) <= QUICK_LENGTH and quick.fullmatch(raw):
        return None
    text = bytes(raw).rstrip(b"\0 ")
    repertoire = _REPERTOIRE.get(vr)
    if repertoire is not None and 0 not in (classes := text.translate(_CLASSES[vr])):
        if _TOO_LONG[vr] not in classes and (vr != "AS" or _AGE.fullmatch(text)):
            return None
        return vr == "UI", f"a {vr} value longer than {repertoire[1]} bytes or malformed"
    found = controls.search(text)
    if found is not None:
        return True, f"control byte 0x{text[found.start()]:02x} in a {vr} value"
    if repertoire is not None:  # a bad UID is no UID: refused; other values are removed
        return vr == "UI", f"a {vr} value outside its VR's repertoire"
    return None
