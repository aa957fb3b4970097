"""The markers and file meta of a de-identified object as raw elements: encoded once, not built per object.

pydicom writes a raw element's bytes as they are, so these give the same file as the datasets
`markers.mark` and `markers.file_meta_for` build, at a fraction of the cost; reading a value back
converts it as for any dataset pydicom has read.
"""

from __future__ import annotations

from functools import cache
from struct import pack

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from .markers import file_meta_elements
from .profile import Profile
from .structure import LONG_VRS

GROUP_LENGTH = 0x00020000


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


def raw_file_meta(sop_class: str, sop_instance: str, syntax: UID) -> FileMetaDataset | None:
    """`markers.file_meta_for` as raw elements, with its File Meta Information Group Length, so that
    a plain `save_as` writes a complete file too; None for values it encodes otherwise than as one
    ASCII string (several UIDs in one value)."""
    meta = FileMetaDataset()
    length = 0
    for tag, vr, value in file_meta_elements(sop_class, sop_instance, syntax):
        if isinstance(value, str):
            if not value.isascii() or "\\" in value:
                return None
            value = value.encode("ascii")
        elif not isinstance(value, bytes):
            return None
        if len(value) % 2:
            value += b"\0" if vr in ("UI", "OB") else b" "
        meta._dict[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)
        length += (12 if vr in LONG_VRS else 8) + len(value)
    meta._dict[BaseTag(GROUP_LENGTH)] = RawDataElement(BaseTag(GROUP_LENGTH), "UL", 4, pack("<I", length), 0,
                                                       False, True)
    # Read as explicit VR little endian, as dcmread's file meta is: pydicom's writer then writes these raw
    # bytes as they are, rather than converting every element to write it again.
    meta.set_original_encoding(False, True, default_encoding)
    return meta
