"""Sequence items read from and written as bytes, so the dataset walker builds no pydicom objects for them.

`read_items` reads a raw sequence value into items of raw elements exactly as pydicom's reader would
(same tags, VRs, lengths, values), or says it cannot (None) where pydicom reads an irregular encoding
its own way; the walker then lets pydicom read it. `encode_items` writes walked items as pydicom's
writer would write the datasets the walker used to build (items and sequences of undefined length).
"""

from __future__ import annotations

from struct import pack

from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_sequence_item
from pydicom.tag import BaseTag

from .errors import DeidError
from .structure import ITEM, ITEM_END, LONG_VRS, PIXEL_DATA, UNDEFINED, Reader, looks_explicit

CHARSET = 0x00080005
_ITEM_START = pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
_ITEM_END = pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = pack("<HHI", 0xFFFE, 0xE0DD, 0)
Items = list[dict[int, RawDataElement]]
# RawDataElement(...) with all its fields given (is_raw, is_buffered last), without the named tuple's own
# constructor in Python: the dataset walker makes one for every element of every sequence it reads.
_raw = tuple.__new__


class _Irregular(Exception):
    """An encoding pydicom reads its own way (a switch of VR encoding, a stray delimiter)."""


def read_items(value: bytes, implicit: bool, offset: int = 0, limit: int | None = None,
               verbatim: list[bytes | None] | None = None) -> Items | None:
    """The items of a little endian sequence value, each as tag -> raw element; None when irregular.

    `offset` is where `value` starts in the bytes pydicom would read it from (positions in errors);
    `limit` the most element headers to read (`structure.max_elements()` when not given). `verbatim`,
    if given, receives for each item its elements' bytes where `encode_items` would write each of
    them so again were they all kept as read, else None."""
    reader = Reader(value, True, limit)
    items: Items = []
    pos, end = 0, len(value)
    try:
        while pos < end:
            tag, _, start, stop = reader.read_header(pos, True, end)
            if tag != ITEM:
                return None
            item, pos, plain = _item(reader, start, stop, implicit, offset)
            items.append(item)
            if verbatim is not None:
                verbatim.append(value[start:pos if stop is not None else pos - 8] if plain else None)
    except (DeidError, _Irregular):
        return None
    return items


def _item(reader: Reader, pos: int, limit: int | None, implicit: bool,
          offset: int) -> tuple[dict[int, RawDataElement], int, bool]:
    """One item's elements, where the next item starts (past the delimiter when undefined), and whether
    its elements' bytes are what `_element` writes of each: no header with nonzero reserved bytes, no
    sequence, Pixel Data, group length, Specific Character Set or private element (written by pydicom)."""
    data = reader.data
    end = len(data) if limit is None else limit
    if (not implicit and pos < end and not looks_explicit(data, pos)
            and data[pos:pos + 4] != b"\xfe\xff\x0d\xe0"):
        raise _Irregular  # implicit VR items in an explicit VR sequence: pydicom switches
    elements: dict[int, RawDataElement] = {}
    last = -1
    plain = True
    while pos < end:
        tag, vr, start, stop = reader.read_header(pos, implicit, end)
        if tag == ITEM_END and limit is None:
            return elements, start, plain
        if tag >> 16 == 0xFFFE or tag <= last:
            raise _Irregular
        last = tag
        if plain and (tag >> 16 & 1 or not tag & 0xFFFF or tag in (CHARSET, PIXEL_DATA)
                      or start - pos == 12 and data[pos + 6:pos + 8] != b"\0\0"):
            plain = False
        if stop is None:  # an undefined length: a sequence, kept as its items' bytes
            plain = False
            if tag == PIXEL_DATA or vr not in (None, "SQ", "UN"):
                raise _Irregular
            reader.undefined(pos, tag, vr)
            after = reader.skip(start, None, implicit, 0)
            value = data[start:after - 8]
            if value and not value.startswith(b"\xfe\xff\x00\xe0"):
                raise _Irregular  # pydicom reads such a private value as bytes, not items
            elements[tag] = RawDataElement(BaseTag(tag), "SQ", UNDEFINED, value, offset + start, implicit,
                                           True)
            pos = after
            continue
        value = data[start:stop] if stop > start else empty_value_for_VR(vr, raw=True)
        elements[tag] = _raw(RawDataElement, (BaseTag(tag), vr, stop - start, value, offset + start, implicit,
                                              True, True, False))
        pos = stop
    if limit is None:
        raise _Irregular
    return elements, pos, plain


def sequence(tag: int, items: bytes, implicit: bool, little: bool) -> RawDataElement:
    """A walked sequence as a raw element: pydicom writes it with undefined length, and reads its
    items back from these bytes when the value is asked for."""
    return RawDataElement(BaseTag(tag), "SQ", UNDEFINED, items, 0, implicit, little)


def encode_items(items: list[dict[int, object]], implicit: bool, little: bool,
                 encodings: list[str], charset: str | list[str] | None,
                 verbatim: list[bytes | None] | None = None) -> bytes:
    """Walked items as pydicom writes undefined-length items of datasets holding these elements.

    An item with private elements or its own Specific Character Set, and any big endian output, is
    written by pydicom itself through a dataset, as it was before, since pydicom converts such
    elements on the way. `verbatim[i]`, where not None, is item i's elements as bytes already (each
    element kept as `read_items` read it: see there)."""
    out: list[bytes] = []
    for i, elements in enumerate(items):
        if verbatim and verbatim[i] is not None:
            out += (_ITEM_START, verbatim[i], _ITEM_END)
            continue
        if not little or CHARSET in elements or any(tag >> 16 & 1 for tag in elements):
            out.append(_through_pydicom(elements, implicit, little, encodings, charset))
            continue
        out.append(_ITEM_START)
        for tag in sorted(elements):
            if tag & 0xFFFF or tag >> 16 <= 6:  # pydicom never writes group lengths above group 6
                out.append(_element(elements[tag], implicit, encodings))
        out.append(_ITEM_END)
    return b"".join(out)


def _element(elem, implicit: bool, encodings: list[str]) -> bytes:
    """One element's bytes as pydicom's `write_data_element` gives them, its header packed here."""
    if elem.__class__ is RawDataElement and elem.is_implicit_VR == implicit and elem.is_little_endian:
        tag, vr, value = elem.tag, elem.VR, elem.value
        if value is None and not elem.length:  # pydicom converts it (as if deferred): written empty
            value = b""
        if elem.length == UNDEFINED and vr == "SQ":
            head = (pack("<HHI", tag >> 16, tag & 0xFFFF, UNDEFINED) if implicit
                    else pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, UNDEFINED))
            return b"".join((head, value, _SEQUENCE_END))
        if value.__class__ is bytes and elem.length != UNDEFINED and tag != PIXEL_DATA:
            if implicit:
                return pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value
            if vr in LONG_VRS:
                return pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
            if vr is not None and len(vr) == 2 and len(value) <= 0xFFFF:
                return pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _through_pydicom(elements: dict[int, object], implicit: bool, little: bool, encodings: list[str],
                     charset: str | list[str] | None) -> bytes:
    item = Dataset(parent_encoding=charset)
    item.set_original_encoding(implicit, little, charset)
    for tag, elem in elements.items():
        item[tag] = elem
    item.is_undefined_length_sequence_item = True
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_sequence_item(fp, item, encodings)
    return fp.getvalue()
