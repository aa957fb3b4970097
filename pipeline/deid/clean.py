"""Clean a text value: remove this dataset's own identifying values and text that identifies by itself.

PS3.15's C action ("replace with values of similar meaning known not to contain identifying
information") for free text: "CT CHEST W CONTRAST for Jane Doe" keeps its meaning as "CT CHEST W
CONTRAST". What identifies is (1) every value the profile removes or replaces in the same dataset,
in the forms the output guard searches for (names in any component order, IDs, UIDs), and dates
also in their common written forms (`19760616`, `06/16/1976`, `16 Jun 1976`, `Jun1976`), and (2)
dates, times, phone numbers, e-mail addresses, long digit runs and UIDs wherever they stand. Words
left dangling before a removed part ("for", "Dr", "DOB:") go with it. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from functools import lru_cache

import ahocorasick

from .values import DUMMY_TEXT, nonconforming

# VRs whose C action cleans the text; other VRs keep the dummy (a name cannot be half removed).
CLEANED_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
UNSPLIT_VRS = frozenset({"LT", "ST", "UT"})  # a backslash is text there, not a value delimiter
MIN_FORM = 4  # shorter values (initials, "M") say nothing alone, as for the output guard
SCANS_BEFORE_AUTOMATON = 4  # texts tested form by form; more are searched by one automaton
_WORD = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_EDGE_L, _EDGE_R = r"(?<![0-9a-z])", r"(?![0-9a-z])"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
# Text that identifies wherever it stands (PS3.15 E.3.5: dates, times, numbers that may be IDs).
_SELF_IDENTIFYING = [
    r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+",  # e-mail address
    r"[012](?:\.\d+){4,}",  # UID (a root of 0, 1 or 2 and five parts or more: not a version 3.5.1.0)
    r"[a-z]*\d{5,}[a-z0-9]*",  # a long digit run, alone or inside an ID such as A1234567
    r"(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)\s?|\d{2,4}[\s.\-])\d{3,4}[\s.\-]\d{3,4}",  # phone number
    r"\d{3}[\-.]\d{4}",  # local phone number
]
_DATES = [
    r"\d{1,2}[/\-]\d{1,2}[/\-](?:\d{4}|\d{2})", r"\d{4}[/\-.]\d{1,2}[/\-.]\d{1,2}",
    r"\d{1,2}\.\d{1,2}\.\d{4}",
    rf"{_DAY}[\s\-.]?{_MONTH}[\s\-.,]*(?:\d{{4}}|\d{{2}})", rf"{_MONTH}[\s\-.]?{_DAY},?[\s\-]?\d{{4}}",
    rf"{_MONTH}[\s\-.,]*\d{{4}}", rf"\d{{4}}[\s\-]{_MONTH}[\s\-]?\d{{1,2}}",
]
_TIMES = [r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s?[ap]\.?m\.?)?", r"\d{1,2}\s?[ap]\.?m\.?"]
# Words that only point at what was removed after them: "for Jane Doe", "DOB: 1976-06-16" (not "MR",
# "MS", "PT": modalities and diseases as often as titles).
_POINTERS = frozenset({
    "for", "of", "by", "to", "from", "at", "on", "in", "per", "and", "or", "with", "call", "called",
    "contact", "dr", "mrs", "prof", "patient", "name", "id", "mrn", "dob", "born",
    "birth", "date", "time", "acc",
    "accession", "no", "nr", "number", "tel", "phone", "ph", "email", "e-mail", "mail", "attn",
    "physician", "referred", "referring", "operator", "uid", "study", "series",
})
_LEFT_SEPARATORS = " \t\r\n,;:#=/-_.^(["
_RIGHT_SEPARATORS = " \t\r\n,;:#=/-_.^)]"
_EDGE_SEPARATORS = " \t\r\n,;:#=/-_^"
_TIDY = re.compile(r"[ \t]{2,}")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")
_POINTER = re.compile(r"([a-z][a-z\-]*)\.?$")


def _compiled(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"{_EDGE_L}(?:{p}){_EDGE_R}" for p in patterns), re.IGNORECASE)


_PATTERN_CHARS = re.compile(r"[0-9@]")  # every self-identifying pattern holds a digit or an @
SELF_IDENTIFYING = _compiled(_SELF_IDENTIFYING + _DATES + _TIMES)
WITHOUT_DATES = _compiled(_SELF_IDENTIFYING)  # under Full Dates, dates and times are kept on purpose


@lru_cache(maxsize=4096)
def date_forms(value: str) -> tuple[str, ...]:
    """A DA value (or the date of a DT) in the ways people write it: 1976-06-16, 16 Jun 1976, ..."""
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})\d*(?:\.\d+)?(?:[+-]\d{4})?", value.strip())
    if not match:
        return ()
    year, month, day = match.groups()
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return ()
    m, d, yy = str(int(month)), str(int(day)), year[2:]
    full = _MONTHS[int(month) - 1]
    short = full[:3]
    forms = [f"{year}{month}{day}"]
    for sep in "-/.":
        forms += [f"{year}{sep}{month}{sep}{day}", f"{month}{sep}{day}{sep}{year}",
                  f"{day}{sep}{month}{sep}{year}", f"{m}{sep}{d}{sep}{year}", f"{d}{sep}{m}{sep}{year}",
                  f"{month}{sep}{day}{sep}{yy}", f"{day}{sep}{month}{sep}{yy}"]
    for name in (short, full):
        forms += [f"{d} {name} {year}", f"{day} {name} {year}", f"{d}-{name}-{year}", f"{day}-{name}-{year}",
                  f"{d}{name}{year}", f"{day}{name}{year}", f"{name} {d}, {year}", f"{name} {d} {year}",
                  f"{name}{year}", f"{name} {year}", f"{name}-{year}"]
    return tuple(forms)


class Cleaner:
    """One dataset's identifying values, ready to be cut out of any of its text values."""

    def __init__(self, forms: Iterable[str], keep_dates: bool = False) -> None:
        """`forms`: the values to remove, each as it may be written (matched case-insensitively, as
        whole words); `keep_dates`: dates and times as such are kept (Retain Full Dates)."""
        self.patterns = WITHOUT_DATES if keep_dates else SELF_IDENTIFYING
        self.forms = {f.lower() for f in forms if len(f.strip()) >= MIN_FORM}
        self.automaton: ahocorasick.Automaton | None = None  # built once a text holds a form
        self.scans = 0

    def _found(self, lowered: str):
        """(end, length) of each occurrence of a form in lowered text. Most texts are short and few
        and hold no form, so the first few are tested form by form before an automaton is built."""
        if self.automaton is None:
            if not self.forms:
                return ()
            if self.scans < SCANS_BEFORE_AUTOMATON:
                self.scans += 1
                if not any(form in lowered for form in self.forms):
                    return ()
            self.automaton = ahocorasick.Automaton()
            for form in self.forms:
                self.automaton.add_word(form, len(form))
            self.automaton.make_automaton()
        return self.automaton.iter(lowered)

    def clean(self, vr: str, raw: bytes) -> bytes:
        """The value with what identifies removed; unchanged bytes when nothing does. Text is read
        byte for byte (Latin-1), so any character set's bytes pass through as they were."""
        text = raw.decode("latin-1")
        stripped = text.rstrip(" \0")
        values = [stripped] if vr in UNSPLIT_VRS else stripped.split("\\")
        cleaned = [self.clean_text(v) for v in values]
        if cleaned == values:
            return raw
        return "\\".join(cleaned).encode("latin-1")

    def clean_text(self, text: str) -> str:
        """One value cleaned until nothing more is found (a removal can join two halves of one)."""
        if "\x1b" in text:  # ISO 2022 escapes: removing bytes could break a multi-byte character
            return "" if self._spans(text) else text
        for _ in range(4):
            spans = self._spans(text)
            if not spans:
                break
            text = _cut(text, spans)
        return text

    def _spans(self, text: str) -> list[tuple[int, int]]:
        lowered = text.lower()
        spans = [m.span() for m in self.patterns.finditer(lowered)] if _PATTERN_CHARS.search(lowered) else []
        if self.forms:
            last = len(lowered) - 1
            for end, size in self._found(lowered):
                start = end - size + 1
                if ((start == 0 or lowered[start - 1] not in _WORD)
                        and (end == last or lowered[end + 1] not in _WORD)):
                    spans.append((start, end + 1))
        return sorted(spans)


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """Remove the spans and the pointer words before each; tidy the seams."""
    parts, pos = [], 0
    for start, end in _merged(spans):
        parts.append(_drop_pointers(text[pos:start]))
        pos = end
    parts.append(text[pos:])
    kept = [parts[0]] + [p.lstrip(_RIGHT_SEPARATORS) for p in parts[1:]]
    joined = " ".join(p for p in kept if p.strip())
    return _TIDY.sub(" ", _EMPTY_BRACKETS.sub("", joined)).strip(_EDGE_SEPARATORS)


def _drop_pointers(left: str) -> str:
    """`left` without the separators and the words at its end that only introduced what followed."""
    while True:
        left = left.rstrip(_LEFT_SEPARATORS)
        match = _POINTER.search(left.lower())
        if not match or match[1] not in _POINTERS or (match.start() and left[match.start() - 1].isalnum()):
            return left
        left = left[:match.start()]


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def cleaned_value(cleaner: Cleaner, vr: str, raw: bytes, required: bool) -> bytes:
    """The bytes a C action writes: the cleaned value, even in length; the dummy where the cleaned
    value is invalid for its VR, or empty and the attribute is Type 1 (`required`)."""
    value = cleaner.clean(vr, raw)
    if nonconforming(vr, value) is not None or (required and not value.strip(b" \0\\")):
        value = DUMMY_TEXT.encode()
    elif not value.strip(b" \0\\"):
        value = b""
    return value + b" " if len(value) % 2 else value
