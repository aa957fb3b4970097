"""One strict reading of a file's element structure, shared by both walkers.

A file is read by element headers alone: every length must end inside its item or file, undefined
lengths only on sequences and encapsulated pixel data, items end with their delimiters, tags rise,
VR bytes are known and agree with the data dictionary. Anything else is refused as `malformed`
(with the offset and what was wrong), so no lenient parser ever reads the bytes another way.
"""

from __future__ import annotations

import os
import zlib
from functools import lru_cache
from struct import Struct, pack, unpack_from

from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.uid import UID

from .errors import DeidError
from .operations import MAX_DEPTH, name
from .values import nonconforming

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END, PIXEL_DATA = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0x7FE00010
MEDIA_SOP_CLASS, TRANSFER_SYNTAX, SPECIFIC_CHARACTER_SET = 0x00020002, 0x00020010, 0x00080005
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
SHORT_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN",
                       "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"})
BINARY_VRS = frozenset({"AT", "FL", "FD", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV",
                        "UL", "US", "UV"})
# An explicit VR header's two VR bytes -> the VR and whether a 4-byte length follows them.
VR_CODES = {vr.encode(): (vr, vr in LONG_VRS) for vr in SHORT_VRS | LONG_VRS}
MAX_ELEMENTS_ENV = "DICOM_DEID_MAX_ELEMENTS"
DEFAULT_MAX_ELEMENTS = 200_000


def max_elements() -> int:
    """Elements one object may hold (headers at any depth); above it the object is refused."""
    return int(os.environ.get(MAX_ELEMENTS_ENV) or DEFAULT_MAX_ELEMENTS)


def malformed(pos: int, what: str) -> DeidError:
    return DeidError("malformed", f"offset {pos}: {what}")


def dictionary_vr(tag: int) -> str:
    """The data dictionary's VR ('US or SS' for ambiguous ones), or UN for unknown and private tags."""
    return "UN" if tag >> 16 & 1 else _public_vr(tag)


# Bounded caches, private tags kept out: a file of many distinct tags must not grow memory for good.
@lru_cache(maxsize=8192)
def _public_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def contradiction(tag: int, vr: str) -> str | None:
    """Why a public attribute's explicit VR cannot be its own, or None when it can.

    A sequence stored under any VR but SQ or UN, or a VR whose header has another layout than
    every VR the dictionary allows (SH read as OV), means the VR bytes are not what the attribute
    is, so its length and all that follows are misread; a Specific Character Set that is not text
    leaves no reading of the text values to trust. Other mismatches (LO for SH, US for SH)
    are common and harmless: the value is checked against the VR it is stored under.
    """
    return None if tag >> 16 & 1 or vr in ("UN", "SQ") else _contradiction(tag, vr)


@lru_cache(maxsize=8192)
def _contradiction(tag: int, vr: str) -> str | None:
    if tag == SPECIFIC_CHARACTER_SET and vr != "CS":  # every text value is read by it: no guessing
        return f"{name(tag)} stored as {vr}, but the character set is CS text"
    known = _public_vr(tag)
    if known in ("UN", "NONE"):
        return None
    alternatives = {v.strip() for v in known.split(" or ")}
    if vr in alternatives:
        return None
    if "SQ" in alternatives or all((vr in LONG_VRS) != (alt in LONG_VRS) for alt in alternatives):
        return f"{name(tag)} stored as {vr}, but the data dictionary says {known}"
    return None


def multiplicity(tag: int) -> int | None:
    """The most values a public attribute may hold, when its dictionary VM is bounded."""
    return None if tag >> 16 & 1 else _multiplicity(tag)


@lru_cache(maxsize=8192)
def _multiplicity(tag: int) -> int | None:
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        return None
    most = vm.split("-")[-1]
    return int(most) if most.isdigit() else None


def conformance(tag: int, vr: str, raw: bytes | memoryview) -> tuple[bool, str] | None:
    """`values.nonconforming` for a kept element; Specific Character Set is read as pydicom reads it
    ('ISO-IR 100', 'GB18030' with NUL padding), since dropping it would change every text's meaning."""
    if tag == SPECIFIC_CHARACTER_SET:
        return nonconforming("LO", raw)
    return nonconforming(vr, raw, multiplicity(tag) if vr in BINARY_VRS else None)  # VM counts binary values


MAX_VERDICTS, MAX_REMEMBERED = 4096, 64  # bounded: ~1 MB
_verdicts: dict[tuple[int, str, bytes], tuple[bool, str] | None] = {}


def remembered_conformance(tag: int, vr: str, raw: bytes | memoryview) -> tuple[bool, str] | None:
    """`conformance`, remembered for short public values: most repeat from object to object (private
    tags are countless, so never remembered). The verdict depends on nothing but the key."""
    if len(raw) > MAX_REMEMBERED or tag >> 16 & 1:
        return conformance(tag, vr, raw)
    key = (tag, vr, bytes(raw))
    verdict = _verdicts.get(key, False)
    if verdict is False:
        if len(_verdicts) >= MAX_VERDICTS:
            _verdicts.clear()
        verdict = _verdicts[key] = conformance(tag, vr, raw)
    return verdict


def looks_explicit(data: bytes, pos: int) -> bool:
    """pydicom's own test for which VR encoding a dataset uses: are bytes 4-5 two capitals?"""
    return pos + 6 <= len(data) and 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B


_EMPTY_DELIMITERS = (pack("<HHI", 0xFFFE, 0xE00D, 0), pack("<HHI", 0xFFFE, 0xE0DD, 0))


# (32-bit length, implicit VR header, explicit VR header) readers by byte order ("<" or ">"), made once: a
# Reader is made for every sequence the dataset walker reads.
_UNPACK = {order: tuple(Struct(order + f).unpack_from for f in ("I", "HHI", "HH2sH")) for order in "<>"}


class Reader:
    """Strict element headers of one byte string in one byte order, counted against a limit."""

    def __init__(self, data: bytes, little: bool = True, limit: int | None = None) -> None:
        self.data = data
        self._u32, self._implicit, self._explicit = _UNPACK["<" if little else ">"]
        self.elements = 0
        self.max_elements = max_elements() if limit is None else limit

    def read_header(self, pos: int, implicit: bool, limit: int) -> tuple[int, str | None, int, int | None]:
        """(tag, explicit VR, value start, value end or None when undefined) of one element."""
        self.elements += 1
        if self.elements > self.max_elements:
            raise DeidError("too-many-elements", f"more than {self.max_elements} elements "
                                                 f"(set {MAX_ELEMENTS_ENV} to allow more)")
        data = self.data
        if pos + 8 > limit:
            raise self._overrun(pos, pos + 8, "an element header", limit)
        if implicit:
            group, element, length = self._implicit(data, pos)
            tag, vr, start = group << 16 | element, None, pos + 8
        else:
            group, element, code, length = self._explicit(data, pos)
            tag, start = group << 16 | element, pos + 8
            if group == 0xFFFE:
                vr, length = None, self._u32(data, pos + 4)[0]
            else:
                vr, long = VR_CODES.get(code) or (code.decode("latin-1"), None)
                if long:
                    if pos + 12 > limit:
                        raise self._overrun(pos, pos + 12, f"the {vr} header of {name(tag)}", limit)
                    length, start = self._u32(data, pos + 8)[0], pos + 12
                elif long is None:
                    raise malformed(pos, f"unknown VR {vr!r} in {name(tag)}")
        if length == UNDEFINED:
            if vr not in (None, "SQ", "UN") and not (tag == PIXEL_DATA and vr in ("OB", "OW")):
                raise malformed(pos, f"undefined length on {name(tag)}, a {vr} element")
            return tag, vr, start, None
        if start + length > limit:
            raise self._overrun(pos, start + length, f"{name(tag)} of length {length}", limit)
        return tag, vr, start, start + length

    def _overrun(self, pos: int, end: int, what: str, limit: int) -> DeidError:
        """Past the end of the file is a truncated file; past the end of an item, a malformed one."""
        if limit == len(self.data):
            return DeidError("truncated", f"offset {pos}: {what} runs past the end of the file "
                                          f"at {len(self.data)}")
        return malformed(pos, f"{what} runs past the end of its item at {limit}")

    def order(self, pos: int, tag: int, last: int) -> None:
        """Refuse a tag that cannot follow `last` in a dataset."""
        if tag <= last:
            raise malformed(pos, f"{name(tag)} follows {name(last)}: tags out of order or repeated")
        if tag >> 16 == 0xFFFE:
            raise malformed(pos, f"{name(tag)} (an item or delimiter) outside its sequence")

    def undefined(self, pos: int, tag: int, vr: str | None) -> None:
        """An implicit undefined length reads as a sequence: refuse it where the dictionary disagrees.
        Encapsulated Pixel Data is OB (PS3.5 A.4): stored as UN it would read as a sequence of datasets."""
        if vr == "UN" and tag == PIXEL_DATA:
            raise malformed(pos, f"undefined length on {name(tag)} stored as UN, which reads as a sequence")
        if vr in (None, "UN") and tag != PIXEL_DATA and dictionary_vr(tag) not in ("SQ", "UN"):
            raise malformed(pos, f"undefined length on {name(tag)}, a {dictionary_vr(tag)} element")

    def stray(self, pos: int, tag: int, stop: int | None, depth: int) -> bool:
        """Zero-length delimiters after the last top-level element carry nothing and are skipped; one
        between elements is refused, since pydicom would stop reading there and the walkers differ."""
        if not (depth == 0 and tag in (ITEM_END, SEQUENCE_END) and stop == pos + 8):
            return False
        rest = pos
        while rest < len(self.data) and self.data[rest:rest + 8] in _EMPTY_DELIMITERS:
            rest += 8
        if rest < len(self.data) and not self.padding(rest, len(self.data)):
            raise malformed(pos, f"{name(tag)} between top-level elements")
        return True

    def padding(self, pos: int, end: int) -> bool:
        """Zero bytes after the last top-level element (a padded file) end the dataset."""
        return not any(memoryview(self.data)[pos:end])

    def skip(self, start: int, stop: int | None, implicit: bool, depth: int) -> int:
        """Where an element ends; an undefined length is followed through its items, strictly."""
        if stop is not None:
            return stop
        pos = start
        while True:
            tag, _, item_start, item_stop = self.read_header(pos, True, len(self.data))
            if tag == SEQUENCE_END:
                return item_start
            if tag != ITEM:
                raise malformed(pos, f"{name(tag)} where a sequence item or its delimiter must be")
            pos = item_stop if item_stop is not None else self.check(item_start, None, implicit, depth + 1)

    def past(self, known: str, start: int, stop: int | None, implicit: bool, depth: int) -> int:
        """Where an element ends, any sequence's items checked on the way (kept or not)."""
        if stop is not None and known == "SQ":
            self.items(start, stop, implicit, depth)
        return self.skip(start, stop, implicit, depth)

    def check(self, pos: int, limit: int | None, implicit: bool, depth: int) -> int:
        """Walk one dataset's headers without keeping anything; where it ends (past its delimiter)."""
        if depth > MAX_DEPTH:
            raise DeidError("too-deep", f"sequences nested more than {MAX_DEPTH} levels deep")
        data = self.data
        end = len(data) if limit is None else limit
        if depth == 0 or not implicit:  # pydicom's own choice, so that both read the same
            implicit = implicit if pos >= end else not looks_explicit(data, pos)
        last = -1
        while pos < end:
            if depth == 0 and self.padding(pos, end):
                return end
            tag, vr, start, stop = self.read_header(pos, implicit, end)
            if tag == ITEM_END and limit is None:
                return start
            if self.stray(pos, tag, stop, depth):
                pos = stop
                continue
            self.order(pos, tag, last)
            last = tag
            if vr is not None and (problem := contradiction(tag, vr)):
                raise malformed(pos, problem)
            if stop is None:
                self.undefined(pos, tag, vr)
            pos = self.past(vr if vr not in (None, "UN") else dictionary_vr(tag), start, stop,
                            implicit or vr == "UN", depth)
        if limit is None:
            raise malformed(pos, "an item of undefined length without its delimiter")
        return pos

    def items(self, start: int, stop: int, implicit: bool, depth: int) -> None:
        """Check a defined-length sequence: items that fill it exactly."""
        pos = start
        while pos < stop:
            tag, _, item_start, item_stop = self.read_header(pos, True, stop)
            if tag != ITEM:
                raise malformed(pos, f"{name(tag)} where a sequence item must be")
            pos = self.check(item_start, item_stop, implicit, depth + 1)
            if pos > stop:
                raise malformed(item_start, f"an item runs past the end of its sequence at {stop}")


def check_file(data: bytes) -> None:
    """Refuse a file whose structure cannot be read one way, before pydicom reads it its own way.

    Mirrors how pydicom picks the encoding (file meta, then a guess from the first element), and
    inflates a deflated dataset first, so every encoding is held to the same rules.
    """
    pos = 132 if data[128:132] == b"DICM" else 0
    meta = Reader(data)
    syntax, media_class, implicit = "", "", not looks_explicit(data, pos)
    while pos + 6 <= len(data) and unpack_from("<H", data, pos)[0] == 0x0002:
        tag, _, start, stop = meta.read_header(pos, implicit, len(data))
        if stop is None:
            raise malformed(pos, f"file meta element {name(tag)} of undefined length")
        if tag == TRANSFER_SYNTAX:
            syntax = data[start:stop].decode("latin-1").strip(" \0")
        elif tag == MEDIA_SOP_CLASS:
            media_class = data[start:stop].decode("latin-1").strip(" \0")
        pos = stop  # the file meta is replaced whole, so its order does not matter
    if media_class == DICOMDIR_SOP_CLASS:
        return  # refused as a DICOMDIR whatever its structure, before anything of it is used
    little, body = True, data
    if not syntax:
        little = not (looks_explicit(data, pos) and len(data) >= pos + 2
                      and unpack_from("<H", data, pos)[0] >= 1024)
    elif UID(syntax).is_transfer_syntax and UID(syntax).is_deflated:
        try:
            body, pos = zlib.decompress(data[pos:], -zlib.MAX_WBITS), 0
        except zlib.error as exc:
            raise malformed(pos, f"the deflated dataset does not inflate: {exc}") from exc
    elif UID(syntax) == "1.2.840.10008.1.2.2":
        little = False
    implicit = syntax == "1.2.840.10008.1.2" or (not syntax and not looks_explicit(data, pos))
    reader = Reader(body, little)
    reader.elements = meta.elements
    reader.check(pos, len(body), implicit, 0)
