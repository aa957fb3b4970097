"""The output guard: an object whose output still holds an identifying value of its input is refused.

Each walker notes, element by element, the raw value of everything it removes or replaces (the
values to search for) and of every public text element it keeps (values the output holds on
purpose, which explain a hit). Before the output is returned, one Aho-Corasick pass searches it
for all of them at once, case-insensitively; a hit that no kept value or engine constant explains
refuses the object with reason `leak-guard`, naming the attribute, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache

import ahocorasick
from pydicom.charset import encode_string
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

from .errors import DeidError
from .markers import IMPLEMENTATION_CLASS_UID, mark, package_version
from .operations import KEEP, WALK, WALK_DUMMY
from .profile import FLAGS, Profile
from .values import DUMMY_TEXT, dummy

# Removed values searched for: names, IDs, free text, dates, times, UIDs, and untyped values that
# read as text. Code strings, ages and numbers are generic; binary values are not text.
SEARCHED_VRS = frozenset({"AE", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT", "UN"})
# Kept public (or safe private) values of these VRs, or untyped ones that read as text, explain a
# hit: the output holds them on purpose. Binary values never do: they may hide swallowed elements.
EXPLAINING_VRS = SEARCHED_VRS - {"UN"} | {"AS", "CS", "DS", "IS"}
UNSPLIT_VRS = frozenset({"LT", "ST", "UT"})  # a backslash is text there, not a value delimiter
MIN_TEXT, MIN_NUMBER, MIN_DISTINCT = 4, 6, 3
MAX_UNTYPED = 1024  # an untyped value longer than this is taken for binary
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_CONTROL = bytes([*(b for b in range(32) if b not in (9, 10, 13)), 0x7F])  # not in ASCII text
_NUMERIC = re.compile(rb"[0-9.+\- ]+")
# Bytes that continue a word in lowered text: a hit inside a longer word or number is no hit. Bytes
# above 0x7F do not count: element and item tags (FFFE,E00D) follow values directly.
_WORD = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyz")

Value = Callable[[], bytes | memoryview]


class Guard:
    """Values one walk read from its input: identifying ones to search for, kept ones that explain."""

    def __init__(self, profile: Profile, collect_kept: bool) -> None:
        self.private_explains = profile.retain_safe_private  # Table E.3.10-1 lists safe values only
        self.collect_kept = collect_kept  # the dataset walker searches what it keeps, not bytes
        self.removed: list[tuple[int, str, bytes]] = []
        self.explaining: list[bytes] = []
        self.kept: list[bytes | memoryview] = []

    def note(self, tag: int, op: str, vr: str, value: Value, depth: int) -> None:
        """One element's fate: removed or replaced (searched for), or kept (may explain a hit)."""
        if op in (WALK, WALK_DUMMY):
            return
        if op != KEEP:
            if vr in SEARCHED_VRS and (vr != "UN" or _untyped_text(value())):
                self.removed.append((tag, vr, bytes(value())))
            return
        if (not tag >> 16 & 1 or self.private_explains) and (
                vr in EXPLAINING_VRS or vr == "UN" and _untyped_text(value())):
            self.explaining.append(bytes(value()))
        if self.collect_kept and not (depth == 0 and tag in PIXEL_TAGS):
            self.kept.append(value())

    def check(self, parts: Iterable[bytes | memoryview] | None = None) -> None:
        """Refuse the object when `parts` (else the kept values) hold an unexplained removed value."""
        patterns = self._patterns()
        if not patterns:
            return
        automaton = ahocorasick.Automaton()
        for pattern, tag in patterns.items():
            automaton.add_word(pattern, (pattern, tag))
        automaton.make_automaton()
        explained = {p for p, _ in _hits(automaton, b"\0".join([*self.explaining, _own_values()]))}
        for pattern, tag in _hits(automaton, b"\0".join(self.kept if parts is None else parts)):
            if pattern not in explained:
                raise DeidError("leak-guard", f"a value of {Tag(tag)} read from the input is still in the "
                                              "output; the object is not written")

    def _patterns(self) -> dict[str, int]:
        """Lowered, specific forms of the removed values -> the tag each came from first."""
        found: dict[str, int] = {}
        for tag, vr, raw in self.removed:
            for form in _forms(vr, raw):
                if _specific(form):
                    found.setdefault(form.lower().decode("latin-1"), tag)
        return found


def _untyped_text(raw: bytes | memoryview) -> bool:
    """Whether a value of unknown VR reads as text: short printable ASCII (binary passes as Latin-1)."""
    if len(raw) > MAX_UNTYPED:
        return False
    data = bytes(raw).rstrip(b"\0")
    return bool(data) and data.isascii() and data.translate(None, _CONTROL) == data


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
    if len(form) < MIN_TEXT or len(set(form.lower())) < MIN_DISTINCT:
        return False
    return len(form) >= MIN_NUMBER or not _NUMERIC.fullmatch(form)


def _hits(automaton: ahocorasick.Automaton, haystack: bytes):
    """(pattern, tag) of each match that is a whole word or value, not part of a longer one."""
    text = haystack.lower().decode("latin-1")
    last = len(text) - 1
    for end, (pattern, tag) in automaton.iter(text):
        start = end - len(pattern) + 1
        if (start == 0 or ord(text[start - 1]) not in _WORD) and (end == last or ord(text[end + 1])
                                                                    not in _WORD):
            yield pattern, tag


@cache
def _own_values() -> bytes:
    """Everything the engine writes itself under any profile: dummies, markers, file meta."""
    words = []
    every_option = Profile(**dict.fromkeys(FLAGS, True))
    for profile in (Profile(), Profile(retain_long_modified_dates=True), every_option):
        ds = Dataset()
        mark(ds, profile)  # together, every marker text and temporal state
        words += [str(e.value) for e in ds.iterall() if e.VR != "SQ"]
    words += [DUMMY_TEXT, IMPLEMENTATION_CLASS_UID, f"DICOMDEID_{package_version()}",
              *(str(dummy(vr)) for vr in ("AS", "DA", "DT", "TM", "DS", "IS"))]
    return "\0".join(words).encode("latin-1", "replace")


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
