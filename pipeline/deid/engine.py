"""De-identify one dataset by PS3.15 Annex E: a pure function from dataset to new dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from .errors import DeidError
from .keys import date_shift_days, new_uid, resolve_secret
from .markers import file_meta_for, mark, transfer_syntax
from .profile import Profile, resolve
from .rules import resolved_action, safe_private
from .values import DATE_VRS, FREE_TEXT_VRS, concrete_vr, dummy, empty, shift

MAX_DEPTH = 64
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PATIENT_ID, _ISSUER, _PATIENT_NAME, _STUDY_UID = 0x00100020, 0x00100021, 0x00100010, 0x0020000D
_SOP_CLASS, _SOP_INSTANCE, _DIRECTORY_RECORDS = 0x00080016, 0x00080018, 0x00041220


@dataclass
class _Walk:
    """What stays fixed while one dataset is walked, and the UID map it fills."""

    profile: Profile
    key: bytes
    shift_days: int
    charset: str | list[str] | None
    encoding: tuple[bool, bool]  # (implicit VR, little endian) of the output
    uid_map: dict[str, str] = field(default_factory=dict)
    uid_attributes: dict[str, int] = field(default_factory=dict)  # the first tag each UID was in

    def items(self, source: Dataset, depth: int, dummy_text: bool) -> Dataset:
        """A new dataset holding what survives of `source`, each element by its own action."""
        if depth > MAX_DEPTH:
            raise DeidError("too-deep", f"sequences nested more than {MAX_DEPTH} levels deep")
        # Matching encodings and character set let pydicom copy kept elements' bytes unparsed.
        out = Dataset(parent_encoding=self.charset)
        out.set_original_encoding(*self.encoding, self.charset)
        creators: dict[int, str] = {}
        kept_blocks: set[tuple[int, int]] = set()
        for tag in source.keys():
            elem = source.get_item(tag, keep_deferred=True)
            if tag.is_private:
                self._private(out, tag, elem, creators, kept_blocks, depth)
                continue
            action = resolved_action(tag, self.profile)
            if action == "X":
                continue
            new = self._element(elem, action, depth, dummy_text)
            if new is not None:
                out[tag] = new
        for creator_tag in (t for t in creators if (t >> 16, t & 0xFF) not in kept_blocks):
            del out[creator_tag]
        _drop_orphaned_overlays(source, out)
        return out

    def _private(self, out: Dataset, tag, elem, creators: dict, kept_blocks: set, depth: int) -> None:
        """Private elements stay only under the options that keep them, with their creators."""
        if self.profile.retain_private_tags and not self.profile.retain_safe_private:
            out[tag] = self._element(elem, "K", depth, False)
            return
        if not self.profile.retain_safe_private or tag.element < 0x10:
            return
        if tag.element <= 0xFF:
            creators[tag] = _text(elem).strip()
            out[tag] = self._keep(elem)
            return
        block = tag.element >> 8
        creator = creators.get((tag.group << 16) | block)
        if creator and (creator, tag.group, tag.element & 0xFF) in safe_private():
            out[tag] = self._element(elem, "K", depth, False)
            kept_blocks.add((tag.group, block))

    def _element(self, elem, action: str, depth: int, dummy_text: bool):
        """The element that replaces `elem` under `action`, or None when nothing should remain."""
        vr = _vr(elem)
        if vr == "SQ":
            return self._sequence(elem, action, depth, dummy_text)
        if action == "K":
            if vr in DATE_VRS and self._shifting_dates:
                action = "M"
            elif dummy_text and vr in FREE_TEXT_VRS:
                action = "D"
            elif dummy_text and vr == "UN":
                return None
            else:
                return self._keep(elem)
        tag = elem.tag
        if action == "Z":
            return DataElement(tag, vr, empty(vr))
        if vr == "UI" and action in "DCU":
            return DataElement(tag, vr, self._uids(tag, _text(elem)))
        if action == "U":  # a UID attribute stored under another VR: nothing safe to keep
            return None
        if action == "M" or (action == "C" and vr in DATE_VRS and self._shifting_dates):
            if vr not in DATE_VRS:
                return self._keep(elem)  # times are kept; only dates move
            return DataElement(tag, vr, shift(vr, _text(elem), self.shift_days))
        return DataElement(tag, vr, dummy(vr))

    def _keep(self, elem):
        """An element unchanged; its header re-encoded when the output's VR encoding differs."""
        if not isinstance(elem, RawDataElement):
            return elem
        implicit, little = self.encoding
        if elem.is_little_endian != little:
            elem = convert_raw_data_element(elem, encoding=self.charset)
            elem.VR = _vr(elem)
        elif elem.is_implicit_VR != implicit:  # same bytes, only the header changes
            elem = elem._replace(VR=_vr(elem), is_implicit_VR=implicit)
        return elem

    @property
    def _shifting_dates(self) -> bool:
        return self.profile.retain_long_modified_dates and not self.profile.retain_long_full_dates

    def _sequence(self, elem, action: str, depth: int, dummy_text: bool) -> DataElement | None:
        """Z empties a sequence; K keeps and walks it; D and C keep it with its free text dummied."""
        if action in "XU":
            return None
        if action == "Z":
            return DataElement(elem.tag, "SQ", Sequence())
        if isinstance(elem, RawDataElement):
            if elem.VR == "UN":  # PS3.5 6.2.2: a sequence stored as UN is in implicit VR little endian
                elem = elem._replace(VR="SQ", is_implicit_VR=True, is_little_endian=True)
            elem = convert_raw_data_element(elem, encoding=self.charset)
        walk_as_dummy = dummy_text or action in "DC"
        items = [self.items(item, depth + 1, walk_as_dummy) for item in elem.value]
        return DataElement(elem.tag, "SQ", Sequence(items))

    def _uids(self, tag: int, value: str) -> list[str] | str:
        new = []
        for uid in (v.strip(" \0") for v in value.split("\\")):
            if uid:
                if uid not in self.uid_map:
                    self.uid_map[uid] = new_uid(self.key, uid)
                    self.uid_attributes[uid] = tag
                new.append(self.uid_map[uid])
        return new[0] if len(new) == 1 else new


def _drop_orphaned_overlays(source: Dataset, out: Dataset) -> None:
    """An overlay group whose Overlay Data was removed would describe nothing: remove it whole."""
    for group in {t.group for t in source.keys() if t.group & 0xFF01 == 0x6000 and t.element == 0x3000}:
        if (group << 16 | 0x3000) not in out:
            for tag in [t for t in out.keys() if t.group == group]:
                del out[tag]


def _vr(elem) -> str:
    """The element's VR, with UN and implicit VR read from the data dictionary."""
    vr = elem.VR
    if vr in (None, "UN"):
        try:
            return concrete_vr(dictionary_VR(elem.tag))
        except KeyError:
            return vr or "UN"
    return concrete_vr(vr)


def _text(elem) -> str:
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip(" \0")
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _raw_text(ds: Dataset, tag: int) -> bytes:
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None or elem.value is None:
        return b""
    value = elem.value
    return (value if isinstance(value, bytes) else str(value).encode("utf-8")).rstrip(b" \0")


def _patient_identity(ds: Dataset) -> bytes:
    """What ties files to one patient: ID and issuer, else name, else the study."""
    patient_id = _raw_text(ds, _PATIENT_ID)
    if patient_id:
        return b"id\x00" + patient_id + b"\x00" + _raw_text(ds, _ISSUER)
    name = _raw_text(ds, _PATIENT_NAME)
    return b"name\x00" + name if name else b"study\x00" + _raw_text(ds, _STUDY_UID)


def _refuse_unusable(ds: Dataset) -> None:
    sop_class = _raw_text(ds, _SOP_CLASS).decode("latin-1")
    meta = getattr(ds, "file_meta", None)
    if (sop_class == DICOMDIR_SOP_CLASS or _DIRECTORY_RECORDS in ds
            or (meta is not None and meta.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS)):
        raise DeidError("dicomdir", "a DICOMDIR's references break under de-identification; "
                                    "rebuild it from the de-identified files instead")
    if not sop_class or not _raw_text(ds, _SOP_INSTANCE):
        raise DeidError("not-composite", "no SOP Class UID or SOP Instance UID, so the object "
                                         "cannot be stored as a DICOM file (ACR-NEMA or a fragment?)")


class Result(NamedTuple):
    """A de-identified dataset, original UID -> new UID, and original UID -> tag it came from."""

    dataset: FileDataset
    uid_map: dict[str, str]
    uid_attributes: dict[str, int]


def apply(dataset: Dataset, profile: Profile | None = None, *,
          secret: str | bytes | None = None, **flags: bool) -> tuple[FileDataset, dict[str, str]]:
    """De-identify `dataset` into a new file dataset; return it with original UID -> new UID."""
    result = deidentify(dataset, resolve(profile, flags), secret=secret)
    return result.dataset, result.uid_map


def deidentify(dataset: Dataset, profile: Profile, *, secret: str | bytes | None = None) -> Result:
    """`apply` for pipelines, which also record where each replaced UID came from."""
    try:
        _refuse_unusable(dataset)
        key = resolve_secret(secret)
        syntax = transfer_syntax(dataset)
        walk = _Walk(profile, key, date_shift_days(key, _patient_identity(dataset)),
                     dataset.original_character_set,
                     (syntax.is_implicit_VR, syntax.is_little_endian))
        body = walk.items(dataset, 0, False)
        mark(body, profile)
        meta = file_meta_for(body, syntax)
    except DeidError:
        raise
    except RecursionError as exc:
        raise DeidError("too-deep", "sequences nested too deeply to process") from exc
    except Exception as exc:  # a broken element anywhere: refuse the object, never half-finish it
        raise DeidError("unprocessable", f"{type(exc).__name__}: {exc}") from exc
    out = FileDataset("", body, preamble=b"\0" * 128, file_meta=meta)
    out.set_original_encoding(*body.original_encoding, body.original_character_set)
    return Result(out, walk.uid_map, walk.uid_attributes)
