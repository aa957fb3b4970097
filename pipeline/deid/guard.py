"""The output guard: an object whose output still holds an identifying value of its input is refused.

Each walker notes, element by element, the raw value of everything it removes or replaces (the
values to search for) and of everything it keeps. The output is the kept values plus what the
engine writes itself (headers, dummies, new UIDs, shifted dates, markers), so before it is returned
one Aho-Corasick pass searches the kept values for all removed ones at once, case-insensitively. A
hit that a short kept public text value explains (it holds the value on purpose) is no leak; any
other refuses the object with reason `leak-guard`, naming the attribute, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from struct import pack

import ahocorasick
from pydicom.charset import encode_string
from pydicom.datadict import dictionary_VR
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

from .clean import UNSPLIT_VRS, Cleaner, date_forms
from .errors import DeidError
from .markers import BASIC_CODE, OPTION_CODES, PRIVATE_KEPT_NOTE, TEMPORAL_STATES
from .operations import CLEAN, KEEP, WALK, WALK_CLEAN, WALK_DUMMY
from .profile import Profile
from .rules import description_tags, listed_tags, resolved_action
from .values import text_dummies

# Removed values searched for: names, IDs, free text, dates, times, UIDs, and untyped values that
# read as text. Code strings, ages and numbers are generic; binary values are not text.
SEARCHED_VRS = frozenset({"AE", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT", "UN"})
# Kept public (or safe private) short values of these VRs explain a hit: the output holds them on
# purpose. Free text, names, untyped and binary values never do: that is where a copied name or a
# swallowed element hides, and a hit there explaining itself would hide it.
EXPLAINING_VRS = SEARCHED_VRS - {"UN", "PN", "LT", "ST", "UT", "UC"} | {"AS", "CS", "DS", "IS"}
MIN_TEXT, MIN_NUMBER, MIN_DISTINCT = 4, 6, 3
MIN_HIDDEN = 12  # an element header and a short value: anything shorter hides nothing
MAX_UNTYPED = 1024  # an untyped value longer than this is taken for binary
MAX_SCANNED = 48  # patterns searched one by one; more go into one automaton
MAX_EXPLAINING = 4096  # longer kept values are data (contours, lists), not a name said on purpose
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # pixels, never read as elements
_NUMBER_CHARS = b"0123456789+-.eE \\"  # a DS or IS value made only of these holds numbers only
_CONTROL = bytes([*(b for b in range(32) if b not in (9, 10, 13)), 0x7F])  # not in ASCII text
_NUMERIC = re.compile(rb"[0-9.+\- ]+")
# Bytes that continue a word in lowered text: a hit inside a longer word or number is no hit. Bytes
# above 0x7F do not count: element and item tags (FFFE,E00D) follow values directly.
_WORD = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyz")

Value = Callable[[], bytes | memoryview]
# Walked sequences are noted element by element; cleaned text is noted as kept once it is cleaned.
_NOT_NOTED = frozenset({WALK, WALK_DUMMY, WALK_CLEAN, CLEAN})
# What the engine itself writes into outputs, so a removed value equal to one of them is no leak.
ENGINE_WORDS = "\0".join([
    *text_dummies(), *TEMPORAL_STATES, "YES",
    *(meaning for _, meaning in [BASIC_CODE, *OPTION_CODES.values()]), PRIVATE_KEPT_NOTE, "dicom-deid",
]).encode()


class Guard:
    """Values one walk read from its input: identifying ones to search for, kept ones that explain."""

    def __init__(self, profile: Profile) -> None:
        self.private_explains = profile.retain_safe_private  # Table E.3.10-1 lists safe values only
        self.removed: dict[tuple[str, bytes], int] = {}  # (VR, value) -> the first tag it came from
        self.explaining: list[bytes | memoryview] = []
        self.kept: list[bytes | memoryview] = []
        self.opaque: list[bytes | memoryview] = []  # kept private or binary values: may hide elements
        self.profile = profile

    def note(self, tag: int, op: str, vr: str, value: Value) -> None:
        """One element's fate: removed or replaced (searched for), or kept (may explain a hit)."""
        if op == KEEP:
            if tag not in PIXEL_TAGS:
                self.keep(tag, vr, value())
        elif searched(vr, op) and (vr != "UN" or _untyped_text(value())):
            self.removed.setdefault((vr, bytes(value())), tag)

    def keep(self, tag: int, vr: str, raw: bytes | memoryview) -> None:
        """A kept element's value, which the byte walker has at hand: it may explain a hit, hide an
        element, or still hold a removed value."""
        if tag in PIXEL_TAGS:
            return
        size, private = len(raw), tag >> 16 & 1
        explaining = vr in EXPLAINING_VRS
        if explaining and size <= MAX_EXPLAINING and (not private or self.private_explains):
            self.explaining.append(raw)  # if printable: tested only when a hit needs explaining
        if (private or not explaining) and size >= MIN_HIDDEN:
            self.opaque.append(raw)
        if size >= MIN_TEXT and (vr not in ("DS", "IS") or bytes(raw).translate(None, _NUMBER_CHARS)):
            self.kept.append(raw)  # shorter values cannot hold a searched value

    def check(self) -> None:
        """Refuse the object when what it keeps holds a removed value that nothing explains; the
        engine's own words (dummies, markers) explain themselves."""
        self._check_hidden_elements()
        patterns = self._patterns() if self.kept else None
        if not patterns:
            return
        kept = _lowered(b"\0".join(self.kept))
        words = list(patterns.items())
        if len(words) <= MAX_SCANNED:  # only patterns the kept text holds at all can hit: most hold none
            words = [(pattern, tag) for pattern, tag in words if pattern in kept]
        hits = _hits(words, kept)
        explained = None  # what the kept values say on purpose, searched once a hit needs it
        for pattern, tag in hits:
            if explained is None:
                explaining = _lowered(b"\0".join([*(raw for raw in self.explaining if _printable(raw)),
                                                  ENGINE_WORDS]))
                explained = {p for p, _ in _hits(list(dict.fromkeys(hits)), explaining)}
            if pattern not in explained:
                raise DeidError("leak-guard", f"a value of {Tag(tag)} read from the input is still in the "
                                              "output; the object is not written")

    def _check_hidden_elements(self) -> None:
        """A kept opaque value holding the explicit VR header of an element the profile removes has
        swallowed that element (a length run over what follows): its value was never read, so only
        its header can tell. Each VR's two letters are found (rare in binary data), then the tag
        before them looked up; the first header in the values is named (all are six bytes)."""
        if not self.opaque:
            return
        data = b"\0".join(self.opaque)
        first: tuple[int, int] | None = None  # (offset, tag) of the first header found
        for code, tags in _removed_headers(self.profile).items():
            at = data.find(code, 4)
            while at >= 0 and (first is None or at < first[0]):
                tag = tags.get(data[at - 4:at])
                if tag is not None:
                    first = (at, tag)
                    break
                at = data.find(code, at + 1)
        if first is not None:
            raise DeidError("leak-guard", "a kept private or binary value holds the header of "
                                          f"{Tag(first[1])}, an element the profile removes; the object "
                                          "is not written")

    def cleaner(self) -> Cleaner:
        """What cleaned text must lose: every removed value in its searched forms (dates also as
        people write them), save removed descriptions, which describe rather than identify."""
        forms: list[str] = []
        descriptions = description_tags()
        for (vr, raw), tag in self.removed.items():
            if tag not in descriptions:
                forms += searched_forms(vr, raw)
                if vr in ("DA", "DT"):
                    forms += [f for v in raw.split(b"\\") for f in date_forms(v.decode("latin-1"))]
        return Cleaner(forms, keep_dates=self.profile.retain_long_full_dates)

    def _patterns(self) -> dict[str, int]:
        """Lowered, specific forms of the removed values -> the tag each came from first."""
        found: dict[str, int] = {}
        for (vr, raw), tag in self.removed.items():
            for pattern in searched_forms(vr, raw):
                found.setdefault(pattern, tag)
        return found


def searched(vr: str, op: str) -> bool:
    """Whether a value removed or replaced so is searched for (a UN value only if it reads as text);
    the byte walker asks once per plan, not per element."""
    return vr in SEARCHED_VRS and op not in _NOT_NOTED and op != KEEP


def _printable(raw: bytes | memoryview) -> bool:
    """No control bytes: a value holding element headers (a swallowed element) explains nothing."""
    data = bytes(raw).rstrip(b"\0")
    return data.translate(None, _CONTROL) == data


@lru_cache(maxsize=64)
def _removed_headers(profile: Profile) -> dict[bytes, dict[bytes, int]]:
    """Explicit VR little endian headers (tag and dictionary VR) of the attributes Table E.1-1 lists
    that the profile does not keep as they are: VR bytes -> tag bytes -> tag."""
    headers: dict[bytes, dict[bytes, int]] = {}
    for tag in listed_tags():
        if resolved_action(tag, profile) != "K":
            try:
                vr = dictionary_VR(tag).split(" or ")[0]
            except KeyError:
                continue
            if len(vr) != 2:  # no explicit VR header holds it
                continue
            headers.setdefault(vr.encode(), {})[pack("<HH", tag >> 16, tag & 0xFFFF)] = tag
    return headers


def _untyped_text(raw: bytes | memoryview) -> bool:
    """Whether a value of unknown VR reads as text: short printable ASCII (binary passes as Latin-1)."""
    if len(raw) > MAX_UNTYPED:
        return False
    data = bytes(raw).rstrip(b"\0")
    return bool(data) and data.isascii() and data.translate(None, _CONTROL) == data


@lru_cache(maxsize=65536)
def searched_forms(vr: str, raw: bytes) -> tuple[str, ...]:
    """The specific forms of one value, lowered; a study's objects repeat their values, so kept."""
    return tuple(dict.fromkeys(f.lower().decode("latin-1") for f in _forms(vr, raw) if _specific(f)))


def _forms(vr: str, raw: bytes) -> list[bytes]:
    """The value as a whole, each of its values, and for names each component and common orders."""
    raw = raw.strip(b" \0")
    values = [raw] if vr in UNSPLIT_VRS else [v.strip(b" \0") for v in raw.split(b"\\")]
    forms = list(values)
    if vr == "PN":
        for value in values:
            for group in value.split(b"="):
                parts = [p.strip() for p in group.split(b"^")]
                forms += [group.rstrip(b"^ "), b"^".join(p for p in parts if p), *parts]
                if len(parts) > 1 and parts[0] and parts[1]:
                    family, given = parts[0], parts[1]
                    forms += [given + b" " + family, family + b" " + given, family + b", " + given,
                              family + b"," + given, given + b"^" + family]
    return forms


def _specific(form: bytes) -> bool:
    """Long and varied enough that finding it means something; short numbers and codes do not."""
    if len(form) < MIN_TEXT or len(form) < MIN_NUMBER and _NUMERIC.fullmatch(form):
        return False
    if sum(c.isalnum() for c in form.decode("latin-1")) < MIN_DISTINCT:  # "50 %", "--/--" say nothing
        return False
    return len(set(form.lower())) >= MIN_DISTINCT


def _lowered(haystack: bytes) -> str:
    """Bytes as the patterns are searched in: lowered, one character per byte."""
    return haystack.lower().decode("latin-1")


def _hits(words: list[tuple[str, int]], text: str) -> list[tuple[str, int]]:
    """(pattern, tag) of each match in lowered text that is a whole word or value, not part of a
    longer one, in the order of their ends (the longer first where two end alike). A few patterns
    are found one by one; more by one automaton pass, which costs about as much as MAX_SCANNED finds."""
    found: list[tuple[int, int, str, int]] = []  # (end, -length, pattern, tag)
    if len(words) > MAX_SCANNED:
        automaton = ahocorasick.Automaton()
        for pattern, tag in words:
            automaton.add_word(pattern, (pattern, tag))
        automaton.make_automaton()
        found = [(end, -len(p), p, tag) for end, (p, tag) in automaton.iter(text)]
    else:
        for pattern, tag in words:
            at = text.find(pattern)
            while at >= 0:
                found.append((at + len(pattern) - 1, -len(pattern), pattern, tag))
                at = text.find(pattern, at + 1)
        found.sort()
    last = len(text) - 1
    return [(pattern, tag) for end, size, pattern, tag in found
            if (end + size == -1 or ord(text[end + size]) not in _WORD)
            and (end == last or ord(text[end + 1]) not in _WORD)]


def element_value(elem, charset: str | list[str] | None) -> bytes:
    """A pydicom element's value as the bytes the output holds (raw bytes when it was read raw)."""
    value = elem.value
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    encodings = [charset] if isinstance(charset, str) and charset else list(charset or ["iso8859"])
    parts = []
    for v in value if isinstance(value, list | tuple | MultiValue) else [value]:
        if isinstance(v, PersonName):
            parts.append(v.encode(encodings))
        elif isinstance(v, str):
            parts.append(encode_string(v, encodings))
        else:
            parts.append(v if isinstance(v, bytes) else str(v).encode("latin-1", "replace"))
    return b"\\".join(parts)
