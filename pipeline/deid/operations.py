"""What happens to one element, decided once for both walkers (pydicom datasets and raw bytes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from pydicom.datadict import dictionary_VR

from .clean import CLEANED_VRS
from .errors import DeidError
from .keys import new_uid
from .profile import Profile
from .rules import safe_private
from .unlisted import NET_UIDS, well_known
from .values import DATE_VRS, FREE_TEXT_VRS

DROP, KEEP, EMPTY, DUMMY, BLANK, UIDS, SHIFT, WALK, WALK_DUMMY = (
    "drop", "keep", "empty", "dummy", "blank", "uids", "shift", "walk", "walk-dummy")
CLEAN, WALK_CLEAN = "clean", "walk-clean"  # text cleaned (clean.py); a sequence whose text is cleaned
NEW_UIDS = "new-uids"  # the safety net's UIDS: well-known UIDs stay (see `settled`)
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Code Value, Coding Scheme Designator and Version (SH), Long and URN Code Values (UC, UR): in a
# cleaned sequence these are codes of a coding scheme, kept as they are (their digit runs are no IDs).
_CODE_VRS = frozenset({"SH", "UC", "UR"})
MAX_DEPTH = 64
PATIENT_ID, ISSUER, PATIENT_NAME, STUDY_UID = 0x00100020, 0x00100021, 0x00100010, 0x0020000D


def name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def shifting_dates(profile: Profile) -> bool:
    return profile.retain_long_modified_dates and not profile.retain_long_full_dates


def operation(action: str, vr: str, inner: str, shifting: bool, tag: int = 0) -> str:
    """Turn a resolved action and the element's VR into one operation.

    `inner` is the operation of the sequence the element is in (WALK at the top level). Inside a
    sequence replaced by D (WALK_DUMMY), free text that no rule names is dummied, since the
    standard lists nothing for, e.g., an SR Content Sequence's Text Value; inside one the profile
    cleans (C: WALK_CLEAN), such long text is cleaned and names are dummied, codes kept. The safety
    net's lower-case actions (unlisted.py) read as the table's upper-case ones.
    """
    if action.islower():
        if action == NET_UIDS:
            return NEW_UIDS if vr == "UI" else DROP
        action = action.upper()
    if action == "X":
        return DROP
    if vr == "SQ":  # U is a required reference sequence (X/Z/U*): kept, its UIDs replaced by theirs
        if action == "Z":
            return EMPTY
        if inner == WALK_DUMMY or action == "D":
            return WALK_DUMMY
        return WALK_CLEAN if inner == WALK_CLEAN or action == "C" else WALK
    if action == "K":
        if vr in DATE_VRS and shifting:
            return SHIFT
        if inner == WALK_CLEAN and vr in CLEANED_VRS - _CODE_VRS:
            return CLEAN
        if inner != WALK and vr in FREE_TEXT_VRS and (inner == WALK_DUMMY or vr not in _CODE_VRS):
            return DUMMY
        return DROP if inner != WALK and vr == "UN" else KEEP
    if action == "Z":
        return EMPTY
    if vr == "UI":
        return UIDS
    if action == "U":  # a UID attribute stored under another VR: nothing safe to keep
        return DROP
    if action == "M" or (action == "C" and vr in DATE_VRS and shifting):
        if vr in DATE_VRS:
            return SHIFT
        # Times are kept; only dates move. A date stored under any other VR (FD, UL, ...) cannot be
        # shifted and must not be kept as it is; nor one stored as TM (a DT of `tag` holds a date).
        return KEEP if vr == "TM" and not holds_date(tag) else DUMMY
    if action == "C" and vr in BULK_VRS:
        return BLANK  # e.g. Overlay Data: zeros of the same length keep the overlay valid and empty
    if action == "C" and vr in CLEANED_VRS and inner != WALK_DUMMY:
        return CLEAN
    return DUMMY


def settled(text: str) -> str:
    """The safety net's NEW_UIDS, or KEEP for a value holding only well-known UIDs."""
    uids = [uid.strip(" \0") for uid in text.split("\\")]
    return KEEP if all(well_known(uid) or not uid for uid in uids) else NEW_UIDS


@lru_cache(maxsize=4096)
def holds_date(tag: int) -> bool:
    """Whether the data dictionary makes a public attribute a date or a date and time."""
    try:
        return not tag >> 16 & 1 and dictionary_VR(tag) in DATE_VRS
    except KeyError:
        return False


class PrivateBlocks:
    """Which private elements of one dataset stay, creator-aware, and which creators go with them."""

    def __init__(self, profile: Profile) -> None:
        self.keep_all = profile.retain_private_tags and not profile.retain_safe_private
        self.safe_only = profile.retain_safe_private
        self.creators: dict[int, str] = {}
        self.kept_blocks: set[tuple[int, int]] = set()

    def keeps(self, tag: int, creator_value: Callable[[], str]) -> bool:
        """Whether to keep a private element; creators stay provisionally, see `orphaned`."""
        group, element = tag >> 16, tag & 0xFFFF
        if element == 0:  # a group length, wrong once anything in the group changes
            return False
        if self.keep_all:
            return True
        if not self.safe_only or element < 0x10:
            return False
        if element <= 0xFF:
            self.creators[tag] = creator_value().strip()
            return True
        creator = self.creators.get(group << 16 | element >> 8)
        if creator and (creator, group, element & 0xFF) in safe_private():
            self.kept_blocks.add((group, element >> 8))
            return True
        return False

    def dropped(self, tag: int) -> None:
        """A creator left out (its value invalid for its VR) reserves nothing: its block goes with it."""
        self.creators.pop(tag, None)

    def orphaned(self) -> list[int]:
        """Creator elements whose block kept nothing."""
        return [t for t in self.creators if (t >> 16, t & 0xFF) not in self.kept_blocks]


def orphaned_overlay_groups(source_tags, kept_tags) -> set[int]:
    """Overlay groups whose Overlay Data was removed would describe nothing: they go whole."""
    kept = set(kept_tags)
    return {t >> 16 for t in source_tags
            if (t >> 16) & 0xFF01 == 0x6000 and t & 0xFFFF == 0x3000 and t not in kept}


@dataclass
class UidMapper:
    """Original UID -> keyed new UID, remembering the first attribute each UID was found in."""

    key: bytes
    uid_map: dict[str, str] = field(default_factory=dict)
    uid_attributes: dict[str, int] = field(default_factory=dict)

    def map(self, tag: int, value: str, keep_known: bool = False) -> list[str]:
        """New UIDs for a value's UIDs; with `keep_known`, well-known ones stay as they are."""
        new = []
        for uid in (v.strip(" \0") for v in value.split("\\")):
            if keep_known and well_known(uid):
                new.append(uid)
            elif uid:
                if not uid.isascii():
                    raise DeidError("malformed", f"a UID of {name(tag)} holds bytes outside ASCII")
                if uid not in self.uid_map:
                    self.uid_map[uid] = _new_uid(self.key, uid)
                    self.uid_attributes[uid] = tag
                new.append(self.uid_map[uid])
        return new


@lru_cache(maxsize=16384)
def _new_uid(key: bytes, uid: str) -> str:
    """`keys.new_uid`, kept by key and UID: a study's objects repeat their study, series and references."""
    return new_uid(key, uid)


def patient_identity(value_of: Callable[[int], bytes]) -> bytes:
    """What ties files to one patient for the date shift: ID and issuer, else name, else study."""
    patient_id = value_of(PATIENT_ID)
    if patient_id:
        return b"id\x00" + patient_id + b"\x00" + value_of(ISSUER)
    name = value_of(PATIENT_NAME)
    return b"name\x00" + name if name else b"study\x00" + value_of(STUDY_UID)


class Pseudonym(NamedTuple):
    """What replaces the top-level Patient ID and Patient's Name, whatever the profile does to them."""

    patient_id: str
    patient_name: str

    def elements(self) -> tuple[tuple[int, str, str], ...]:
        """(tag, VR, value) of the two elements written in place of the originals."""
        return ((PATIENT_NAME, "PN", self.patient_name), (PATIENT_ID, "LO", self.patient_id))
