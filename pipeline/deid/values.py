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
_DUMMIES: dict[str, Any] = {
    "AS": "000D", "DA": "19000101", "DT": "19000101000000", "TM": "000000",
    "DS": "0", "IS": "0", "FL": 0.0, "FD": 0.0, "AT": 0,
    **dict.fromkeys(("US", "SS", "UL", "SL", "UV", "SV"), 0),
    **dict.fromkeys(("OB", "OD", "OF", "OL", "OV", "OW", "UN"), bytes(8)),
}
_BINARY = frozenset({"FL", "FD", "AT", "US", "SS", "UL", "SL", "UV", "SV",
                     "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(.*)$")


def concrete_vr(vr: str) -> str:
    """One VR for an ambiguous dictionary entry such as 'US or SS' or 'OB or OW'."""
    return vr.split(" or ")[0]


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
