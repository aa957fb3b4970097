"""What a de-identified object says about itself: PS3.15 E.1.1 markers and new file meta."""

from __future__ import annotations

from functools import cache, lru_cache
from importlib.metadata import PackageNotFoundError, version

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .errors import DeidError
from .profile import Profile
from .rules import edition

IMPLEMENTATION_CLASS_UID = "2.25.122751978065247634661608775165321655579"
# PS3.16 CID 7050 (De-identification Method): code value and meaning for the profile and options.
BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES = {
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptions": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modified_dates": (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}
PRIVATE_KEPT_NOTE = "Private attributes retained (not a PS3.15 option)"
_TRANSFER_SYNTAX = 0x00020010
# Patient Identity Removed, De-identification Method, its Code Sequence, Longitudinal Temporal
# Information Modified.
MARKER_TAGS = (0x00120062, 0x00120063, 0x00120064, 0x00280303)


@cache
def package_version() -> str:
    try:
        return version("dicom-deid")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


def options_used(profile: Profile) -> list[tuple[str, str]]:
    """CID 7050 codes for the profile; full dates win over modified dates, as in the engine."""
    used = [code for flag, code in OPTION_CODES.items() if getattr(profile, flag)]
    if profile.retain_long_full_dates and profile.retain_long_modified_dates:
        used.remove(OPTION_CODES["retain_long_modified_dates"])
    return [BASIC_CODE, *used]


TEMPORAL_STATES = ("REMOVED", "UNMODIFIED", "MODIFIED")


def temporal_state(profile: Profile) -> str:
    if profile.retain_long_full_dates:
        return "UNMODIFIED"
    return "MODIFIED" if profile.retain_long_modified_dates else "REMOVED"


def mark(ds: Dataset, profile: Profile) -> None:
    """Record that identity was removed, and how (PS3.15 E.1.1 and PS3.3 C.7.1.1)."""
    codes = options_used(profile)
    method = [f"dicom-deid {package_version()}", f"PS3.15 {edition()} Annex E"]
    method += [meaning for _, meaning in codes]
    if profile.retain_private_tags and not profile.retain_safe_private:
        method.append(PRIVATE_KEPT_NOTE)
    for tag in MARKER_TAGS:  # replaced, never set into: pydicom would keep a source element's VR
        ds.pop(tag, None)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = method
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = temporal_state(profile)


def file_meta_elements(sop_class: str, sop_instance: str, syntax: str) -> list[tuple[int, str, object]]:
    """Fresh file meta as (tag, VR, value): nothing of the source's but its transfer syntax."""
    return [(0x00020001, "OB", b"\x00\x01"), (0x00020002, "UI", sop_class),
            (0x00020003, "UI", sop_instance), (0x00020010, "UI", syntax),
            (0x00020012, "UI", IMPLEMENTATION_CLASS_UID),
            (0x00020013, "SH", f"DICOMDEID_{package_version()}"[:16])]


def file_meta_for(sop_class: str | MultiValue, sop_instance: str | MultiValue,
                  syntax: UID) -> FileMetaDataset:
    """Fresh file meta as a dataset: for SOP UIDs `rawmarks.raw_file_meta` cannot encode (several values)."""
    meta = FileMetaDataset()
    for tag, vr, value in file_meta_elements(sop_class, sop_instance, syntax):
        meta.add_new(tag, vr, value)
    return meta


@lru_cache(maxsize=64)
def _syntax(value: str) -> UID:
    """A transfer syntax the output can keep, checked once per syntax, not per object."""
    syntax = UID(value)
    if not syntax.is_transfer_syntax:
        raise DeidError("unsupported-transfer-syntax", f"{syntax} is not a transfer syntax pydicom can write")
    return syntax


def transfer_syntax(source: Dataset) -> UID:
    """The output keeps the source's transfer syntax; one without file meta says it by encoding."""
    meta = getattr(source, "file_meta", None)
    if meta is not None and _TRANSFER_SYNTAX in meta._dict:
        value = meta[_TRANSFER_SYNTAX].value
        if not isinstance(value, str):  # several values (a header swallowed into it), or none
            raise DeidError("unsupported-transfer-syntax", "the Transfer Syntax UID holds no single UID")
        return _syntax(value)
    implicit, little = source.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian
