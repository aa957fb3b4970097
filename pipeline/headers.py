"""The few top-level elements a plan needs, read with the engine's own strict header reader, not a parse."""

from __future__ import annotations

import zlib
from functools import lru_cache
from struct import Struct, unpack_from

from pydicom.charset import convert_encodings, decode_bytes, default_encoding
from pydicom.uid import UID
from pydicom.values import TEXT_VR_DELIMS

from .deid.errors import DeidError
from .deid.parse import looks_like_dicom
from .deid.structure import (
    DICOMDIR_SOP_CLASS,
    MEDIA_SOP_CLASS,
    SPECIFIC_CHARACTER_SET,
    TRANSFER_SYNTAX,
    UNDEFINED,
    VR_CODES,
    Reader,
    contradiction,
    looks_explicit,
)

# Every column of the inventory comes from a tag at or below Burned In Annotation (0028,0301): reading
# stops there, before private groups such as Siemens CSA (0029,xxxx), overlays and pixel data.
LAST_TAG = 0x00280301
COLUMNS = {0x0020000D: "study_uid", 0x0020000E: "series_uid", 0x00080018: "sop_uid", 0x00100020: "patient_id",
           0x00100021: "issuer_of_patient_id", 0x00080060: "modality", 0x00080016: "sop_class_uid",
           LAST_TAG: "burned_in_annotation"}
# Values in the object's character set; the others are plain ASCII codes and UIDs.
_TEXT = {0x00100020, 0x00100021}
_KEPT = frozenset(COLUMNS) | {SPECIFIC_CHARACTER_SET}
# Little endian element headers, read inline for the common element (see `_elements`).
_EXPLICIT_LE, _IMPLICIT_LE, _U32_LE = (Struct(f).unpack_from for f in ("<HH2sH", "<HHI", "<I"))
_UNKNOWN_VR = (None, False)
_PREAMBLE_AND_MAGIC = 132
_NO_LIMIT = 2**62
_DEFLATED_EXPLICIT = "1.2.840.10008.1.2.1.99"


class NeedMore(Exception):
    """The header runs past the bytes read so far; `wanted` is how far it reaches, at least."""

    def __init__(self, wanted: int = 0) -> None:
        super().__init__(wanted)
        self.wanted = wanted


def _text(raw: bytes, encodings: list[str] | None, text: bool) -> str | None:
    """A value as pydicom shows it: text in the object's character set, padding stripped."""
    try:
        value = decode_bytes(raw, encodings or [default_encoding], TEXT_VR_DELIMS) if text else None
    except Exception:  # an unknown character set: the plan only groups by it, so latin-1 will do
        value = None
    return (value if value is not None else raw.decode("latin-1")).strip("\0 ") or None


def _meta(data: bytes, pos: int, whole: bool, reader: Reader) -> tuple[int, str, str]:
    """Past the file meta group: (where the dataset starts, transfer syntax, media storage SOP class)."""
    syntax = media_class = ""
    implicit = not looks_explicit(data, pos)
    while pos + 6 <= len(data) and unpack_from("<H", data, pos)[0] == 0x0002:
        if pos + 12 > len(data) and not whole:
            raise NeedMore(pos + 12)
        tag, _, start, stop = reader.read_header(pos, implicit, len(data) if whole else _NO_LIMIT)
        if stop is None:
            raise DeidError("malformed", f"offset {pos}: file meta element of undefined length")
        if stop > len(data):
            raise NeedMore(stop)
        if tag == TRANSFER_SYNTAX:
            syntax = data[start:stop].decode("latin-1").strip(" \0")
        elif tag == MEDIA_SOP_CLASS:
            media_class = data[start:stop].decode("latin-1").strip(" \0")
        pos = stop
    if pos + 6 > len(data) and not whole:
        raise NeedMore(pos + 12)
    return pos, syntax, media_class


@lru_cache(maxsize=256)
def _deflated(syntax: str) -> bool:
    """Whether a transfer syntax deflates its dataset (asked once per syntax, not once per object)."""
    return syntax == _DEFLATED_EXPLICIT or (UID(syntax).is_transfer_syntax and UID(syntax).is_deflated)


@lru_cache(maxsize=8192)
def _agrees(tag: int, vr: str) -> bool:
    """Whether an explicit VR can be the attribute's own (asked once per tag and VR, not per element)."""
    return contradiction(tag, vr) is None


def _body(data: bytes, pos: int, syntax: str, whole: bool) -> tuple[bytes, int, bool, bool]:
    """(dataset bytes, where its first element is, little endian, whole) as the engine reads them."""
    if not syntax:
        big = looks_explicit(data, pos) and len(data) >= pos + 2 and unpack_from("<H", data, pos)[0] >= 1024
        little = not big
        return data, pos, little, whole
    if _deflated(syntax):
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            body = inflate.decompress(data[pos:])
        except zlib.error as exc:
            raise DeidError("malformed", f"offset {pos}: the deflated dataset does not inflate") from exc
        return body, 0, True, whole and inflate.eof
    return data, pos, syntax != "1.2.840.10008.1.2.2", whole


def read_header(data: bytes, whole: bool) -> dict:
    """The plan's columns from an object's first bytes (all of it when `whole`), or its `error`.

    Raises NeedMore when the elements up to Burned In Annotation run past `data`. An object the reader
    refuses gets the refusal's reason as its error; the engine, which reads it the same way, quarantines it.
    """
    if not data:
        return {"error": "empty"}
    if len(data) < _PREAMBLE_AND_MAGIC and not whole:
        raise NeedMore(_PREAMBLE_AND_MAGIC)
    if not looks_like_dicom(data):
        return {"error": "not-dicom"}
    try:
        return _elements(data, whole)
    except NeedMore:
        if whole:
            return {"error": "truncated"}
        raise
    except DeidError as exc:
        if exc.reason == "truncated" and not whole:
            raise NeedMore() from None
        return {"error": exc.reason}


def _plain_run(body: bytes, pos: int, last: int, implicit: bool, reader: Reader,
               found: dict[int, bytes]) -> tuple[int, int]:
    """Past the common elements from `pos` on, read inline: little endian values of defined length (sequences
    too, stepped over as `_elements` steps over them), in order, up to the last column, with a known VR that
    can be the attribute's own. Every check of `_elements` passes for them, so only the first other element
    needs the full reading; (pos, last tag)."""
    end = len(body) - 12  # as `_elements` asks: 12 bytes, or NeedMore
    elements, most = reader.elements, reader.max_elements
    while pos <= end and body[pos] and elements < most:  # padding starts with a zero byte
        if implicit:
            group, element, length = _IMPLICIT_LE(body, pos)
            plain = length != UNDEFINED
            start = pos + 8
        else:
            group, element, code, length = _EXPLICIT_LE(body, pos)
            vr, long = VR_CODES.get(code, _UNKNOWN_VR)
            if long:
                length, start = _U32_LE(body, pos + 8)[0], pos + 12
            else:
                start = pos + 8
            plain = length != UNDEFINED and vr is not None and _agrees(group << 16 | element, vr)
        tag, stop = group << 16 | element, start + length
        if not (plain and last < tag <= LAST_TAG and stop <= end + 12):
            break
        elements += 1
        if tag in _KEPT:
            found[tag] = body[start:stop]
        last, pos = tag, stop
    reader.elements = elements
    return pos, last


def _elements(data: bytes, whole: bool) -> dict:
    meta = Reader(data)
    pos, syntax, media_class = _meta(data, 132 if data[128:132] == b"DICM" else 0, whole, meta)
    if media_class == DICOMDIR_SOP_CLASS:  # refused whatever its structure, as the engine does
        return {"sop_class_uid": media_class, "transfer_syntax_uid": syntax or None, "error": "dicomdir"}
    body, pos, little, complete = _body(data, pos, syntax, whole)
    reader = Reader(body, little)
    reader.elements = meta.elements
    implicit = not looks_explicit(body, pos)  # at the top level, as the walkers decide
    found: dict[int, bytes] = {}
    last = -1
    limit = len(body) if complete else _NO_LIMIT
    while True:
        if little:  # big endian headers start with a zero byte, which the padding check below must see
            pos, last = _plain_run(body, pos, last, implicit, reader, found)
        if pos >= len(body) and complete:
            break
        if pos + 12 > len(body) and not complete:
            raise NeedMore(pos + 12)
        if not body[pos] and reader.padding(pos, len(body)):  # padding starts with a zero byte
            if complete:
                break
            raise NeedMore(len(body) + 1)
        tag, vr, start, stop = reader.read_header(pos, implicit, limit)
        if tag >> 16 == 0xFFFE:  # above every column, so looked at first, as the byte walker does
            if reader.stray(pos, tag, stop, 0):
                pos = stop
                continue
            reader.order(pos, tag, last)  # an item or delimiter outside its sequence: refused
        if tag > LAST_TAG:
            break
        if tag <= last:
            reader.order(pos, tag, last)
        last = tag
        if vr is not None and (problem := contradiction(tag, vr)):
            raise DeidError("malformed", f"offset {pos}: {problem}")
        if stop is None:
            reader.undefined(pos, tag, vr)
        elif stop > len(body):
            raise NeedMore(stop)
        if tag in _KEPT:
            found[tag] = body[start:stop] if stop is not None else b""
        # A defined length is stepped over, items and all: the engine checks every item, and where one is
        # malformed refuses the object in its unit, whatever the plan read; an undefined one is followed
        # through its items to its delimiter.
        pos = stop if stop is not None else reader.skip(start, stop, implicit or vr == "UN", 0)
    charset = found.get(SPECIFIC_CHARACTER_SET)
    encodings = None
    if charset:
        try:
            encodings = convert_encodings([v.strip(" \0") for v in charset.decode("latin-1").split("\\")])
        except Exception:
            encodings = None
    record = {column: _text(found[tag], encodings, tag in _TEXT) if tag in found else None
              for tag, column in COLUMNS.items()}
    record["sop_class_uid"] = record["sop_class_uid"] or media_class or None
    record["transfer_syntax_uid"] = syntax or None
    return record
