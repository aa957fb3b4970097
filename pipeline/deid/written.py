"""`apply`'s result, which writes itself: pydicom's writer spends microseconds on each element, where
joining the raw elements the walk made costs a tenth of that, and gives the same bytes.

Only a dataset exactly as `apply` made it is written so (the same element objects, file meta and
preamble, in little endian): anything changed since, or any option but `enforce_file_format` and
`overwrite`, goes to pydicom's own writer. Elements that are not raw are written by pydicom's own
element writer in either case.
"""

from __future__ import annotations

import os
from functools import lru_cache
from operator import is_
from struct import pack
from typing import Any

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from .structure import PIXEL_DATA, TRANSFER_SYNTAX, UNDEFINED

_SEQUENCE_END = pack("<HHI", 0xFFFE, 0xE0DD, 0)
_ITEM = b"\xfe\xff\x00\xe0"
_LONG = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)


class Deidentified(FileDataset):
    """A FileDataset whose `save_as` writes, while it is as `apply` made it, the bytes pydicom would."""

    def seal(self) -> None:
        """Remember what `apply` made, so that `save_as` can tell whether anything changed since."""
        meta = self.file_meta
        self.__dict__["_made"] = (list(self._dict), list(self._dict.values()), meta,
                                  list(meta._dict.values()), self.preamble)

    def save_as(self, filename: Any, /, write_like_original: bool | None = None, *,
                implicit_vr: bool | None = None, little_endian: bool | None = None,
                enforce_file_format: bool = False, overwrite: bool = True, **kwargs: Any) -> None:
        """pydicom's `save_as`, the same bytes, written from the raw elements while nothing changed."""
        plain = write_like_original is None and implicit_vr is None and little_endian is None and not kwargs
        data = self._encoded() if plain else None
        if data is None:
            super().save_as(filename, write_like_original, implicit_vr=implicit_vr,
                            little_endian=little_endian, enforce_file_format=enforce_file_format,
                            overwrite=overwrite, **kwargs)
            return
        if isinstance(filename, str | os.PathLike):
            with open(filename, "wb" if overwrite else "xb") as out:
                out.write(data)
        else:
            filename.write(data)

    def _encoded(self) -> bytes | None:
        """The file's bytes, or None where pydicom's writer must decide (changed since `apply`)."""
        made = self.__dict__.get("_made")
        if made is None or not self._unchanged(made):
            return None
        implicit, little = self.original_encoding
        syntax = _syntax(self.file_meta._dict.get(TRANSFER_SYNTAX))
        if (not little or syntax is None or syntax.is_private or not syntax.is_transfer_syntax
                or syntax.is_deflated or syntax.is_implicit_VR != implicit or not syntax.is_little_endian
                or any(tag >> 16 in (0, 2) for tag in self._dict)):  # pydicom refuses those: let it say so
            return None
        meta = _raw_elements(self.file_meta, False)
        body = _raw_elements(self, implicit, syntax.is_compressed)
        if meta is None or body is None:
            return None
        return b"".join([self.preamble, b"DICM", *meta, *body])

    def _unchanged(self, made: tuple) -> bool:
        tags, elements, meta, meta_elements, preamble = made
        return (self.file_meta is meta and self.preamble is preamble and len(preamble) == 128
                and list(self._dict) == tags and all(map(is_, self._dict.values(), elements))
                and len(meta._dict) == len(meta_elements)
                and all(map(is_, meta._dict.values(), meta_elements))
                and self.original_character_set == self._character_set)


@lru_cache(maxsize=64)
def _syntax_of(value: bytes) -> UID:
    return UID(value.decode("ascii", "replace").rstrip("\0 "))


def _syntax(elem: Any) -> UID | None:
    """The Transfer Syntax UID of a raw file meta element, read without converting it."""
    if elem.__class__ is not RawDataElement or elem.value.__class__ is not bytes:
        return None
    return _syntax_of(elem.value)


def _raw_elements(ds: Dataset, implicit: bool, compressed: bool = False) -> list[bytes] | None:
    """Each element's bytes in tag order, as pydicom's `write_dataset` writes them (little endian);
    None for pixel data pydicom would convert otherwise than it is (odd, or not as the syntax says)."""
    elements = ds._dict
    parts: list[bytes] = []
    charset = None
    for tag in sorted(elements):
        if not tag & 0xFFFF and tag >> 16 > 6:  # retired group lengths: pydicom does not write them
            continue
        elem = elements[tag]
        value = elem.value
        if elem.__class__ is RawDataElement and value.__class__ is bytes and elem.is_little_endian:
            undefined = elem.length == UNDEFINED
            if tag == PIXEL_DATA and (undefined != compressed or len(value) % 2 or undefined
                                      and not value.startswith(_ITEM) or not implicit and elem.VR not in
                                      ("OB", "OW")):
                return None
            head = _header(tag, elem.VR, UNDEFINED if undefined else len(value), implicit, undefined)
            if head is not None:
                parts += (head, value, _SEQUENCE_END) if undefined else (head, value)
                continue
        elif tag == PIXEL_DATA:
            return None
        if charset is None:
            charset = ds.get("SpecificCharacterSet", default_encoding)
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, True
        write_data_element(fp, ds.get_item(tag), charset)  # as pydicom's writer: reads a deferred value
        parts.append(fp.getvalue())
    return parts


def _header(tag: int, vr: str | None, length: int, implicit: bool, undefined: bool) -> bytes | None:
    """A raw element's header as pydicom writes it; None where pydicom does more (converts to UN, refuses)."""
    if implicit:
        return pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    if vr in _LONG:
        return pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    if vr.__class__ is str and len(vr) == 2 and not undefined and length <= 0xFFFF:
        return pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)
    return None
