"""The markers and file meta of a de-identified object as raw elements: encoded once, not built per object.

pydicom writes a raw element's bytes as they are, so these give the same file as the datasets
`markers.mark` and `markers.file_meta_for` build, at a fraction of the cost; reading a value back
converts it as for any dataset pydicom has read.
"""

from __future__ import annotations

from copy import deepcopy
from functools import cache, lru_cache
from struct import pack
from typing import Any

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from .markers import file_meta_elements
from .profile import Profile
from .structure import LONG_VRS

GROUP_LENGTH, MEDIA_SOP_INSTANCE = 0x00020000, 0x00020003
_GROUP_LENGTH = BaseTag(GROUP_LENGTH)


@cache
def raw_markers(profile: Profile, implicit: bool) -> tuple[RawDataElement, ...]:
    """The PS3.15 E.1.1 markers as raw elements: the byte walker's encoding, values without headers."""
    from .stream import _marker_elements  # the byte walker imports the engine, so not at the top

    found = []
    for tag, data in _marker_elements(profile, implicit):
        vr = data[4:6].decode("latin-1")
        head = 8 if implicit or vr not in LONG_VRS else 12
        value = data[head:]
        found.append(RawDataElement(BaseTag(tag), None if implicit else vr, len(value), value, 0, implicit,
                                    True))
    return tuple(found)


class RawFileMeta(FileMetaDataset):
    """File meta whose deep copies share its raw elements (pydicom's writer deep-copies the file meta
    of every dataset it writes): a raw element of bytes is immutable, so sharing it copies it whole.
    Anything else, an element converted or set by the caller included, is deep-copied as usual."""

    def __deepcopy__(self, memo: dict[int, Any]) -> RawFileMeta:
        copied = self.__class__.__new__(self.__class__)  # what copy.deepcopy does for a Dataset
        memo[id(self)] = copied
        for attribute, value in self.__dict__.items():
            if attribute == "_dict":
                value = {tag: elem if elem.__class__ is RawDataElement and elem.value.__class__ is bytes
                         else deepcopy(elem, memo) for tag, elem in value.items()}
            else:
                value = deepcopy(value, memo)
            copied.__dict__[attribute] = value
        return copied


def raw_file_meta(sop_class: str, sop_instance: str, syntax: UID) -> FileMetaDataset | None:
    """`markers.file_meta_for` as raw elements, with its File Meta Information Group Length, so that
    a plain `save_as` writes a complete file too; None for values it encodes otherwise than as one
    ASCII string (several UIDs in one value)."""
    fixed, instance = _fixed_meta(sop_class, syntax), _raw(MEDIA_SOP_INSTANCE, "UI", sop_instance)
    if fixed is None or instance is None:
        return None
    meta = RawFileMeta()
    length = 0
    for elem in fixed:
        elem = elem or instance
        meta._dict[elem.tag] = elem
        length += (12 if elem.VR in LONG_VRS else 8) + elem.length
    meta._dict[_GROUP_LENGTH] = RawDataElement(_GROUP_LENGTH, "UL", 4, pack("<I", length), 0, False, True)
    # Read as explicit VR little endian, as dcmread's file meta is: pydicom's writer then writes these raw
    # bytes as they are, rather than converting every element to write it again.
    meta.set_original_encoding(False, True, default_encoding)
    return meta


@lru_cache(maxsize=256)
def _fixed_meta(sop_class: str, syntax: UID) -> tuple[RawDataElement | None, ...] | None:
    """The file meta elements but the group length, in order, None in the SOP instance's place; made
    once per SOP class and transfer syntax (raw elements are immutable, so outputs share them)."""
    found = []
    for tag, vr, value in file_meta_elements(sop_class, "", syntax):
        elem = None if tag == MEDIA_SOP_INSTANCE else _raw(tag, vr, value)
        if elem is None and tag != MEDIA_SOP_INSTANCE:
            return None
        found.append(elem)
    return tuple(found)


def _raw(tag: int, vr: str, value: object) -> RawDataElement | None:
    """One explicit VR little endian element, or None for a value that is not one ASCII string or bytes."""
    if isinstance(value, str):
        if not value.isascii() or "\\" in value:
            return None
        value = value.encode("ascii")
    elif not isinstance(value, bytes):
        return None
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)
