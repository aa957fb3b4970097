"""Bytes to dataset and back, with every way a file can be broken turned into a DeidError."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset

from .errors import DeidError
from .structure import check_file

UNDEFINED_LENGTH = 0xFFFFFFFF
# Groups a file without the DICM preamble may start with: command, file meta, identifying.
_FIRST_GROUPS = {0x0000, 0x0002, 0x0008}


def looks_like_dicom(data: bytes) -> bool:
    """A cheap first test, shared with the header scan so both classify files alike."""
    if data[128:132] == b"DICM":
        return True
    return len(data) >= 8 and (int.from_bytes(data[:2], "little") in _FIRST_GROUPS
                               or int.from_bytes(data[:2], "big") in _FIRST_GROUPS)


def parse(data: bytes) -> Dataset:
    """Read one DICOM object from memory, refusing empty, foreign, truncated or hostile bytes."""
    if not data:
        raise DeidError("empty", "the object has zero bytes")
    if not looks_like_dicom(data):
        raise DeidError("not-dicom", "neither a DICM preamble nor a plausible first element")
    check_file(data)  # one strict reading of the structure first, so pydicom cannot read another
    try:
        ds = dcmread(BytesIO(data), force=True)
    except RecursionError as exc:
        raise DeidError("too-deep", "sequences nested too deeply to read") from exc
    except Exception as exc:
        raise DeidError("unreadable", f"{type(exc).__name__}: {exc}") from exc
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        length = getattr(elem, "length", UNDEFINED_LENGTH)
        if length != UNDEFINED_LENGTH and elem.value is not None and len(elem.value) < length:
            raise DeidError("truncated", f"element {tag} holds {len(elem.value)} of its "
                                         f"{length} bytes")
    if not len(ds):
        raise DeidError("not-dicom", "no data elements")
    return ds


def serialize(ds: Dataset) -> bytes:
    """Encode a dataset as a complete DICOM file (preamble, file meta, body)."""
    buffer = BytesIO()
    try:
        dcmwrite(buffer, ds, enforce_file_format=True)
    except Exception as exc:
        raise DeidError("unwritable", f"{type(exc).__name__}: {exc}") from exc
    return buffer.getvalue()
