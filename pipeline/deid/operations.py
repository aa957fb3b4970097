"""What happens to one element, decided once for both walkers (pydicom datasets and raw bytes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import DeidError
from .keys import new_uid
from .profile import Profile
from .rules import safe_private
from .values import DATE_VRS, FREE_TEXT_VRS

DROP, KEEP, EMPTY, DUMMY, BLANK, UIDS, SHIFT, WALK, WALK_DUMMY = (
    "drop", "keep", "empty", "dummy", "blank", "uids", "shift", "walk", "walk-dummy")
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
MAX_DEPTH = 64
PATIENT_ID, ISSUER, PATIENT_NAME, STUDY_UID = 0x00100020, 0x00100021, 0x00100010, 0x0020000D


def name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def shifting_dates(profile: Profile) -> bool:
    return profile.retain_long_modified_dates and not profile.retain_long_full_dates


def operation(action: str, vr: str, dummy_text: bool, shifting: bool) -> str:
    """Turn a resolved action and the element's VR into one operation.

    Inside a sequence replaced by D or C (`dummy_text`), free text that no rule names is dummied,
    since the standard lists nothing for, e.g., an SR Content Sequence's Text Value.
    """
    if action == "X":
        return DROP
    if vr == "SQ":  # U is a required reference sequence (X/Z/U*): kept, its UIDs replaced by theirs
        if action == "Z":
            return EMPTY
        return WALK_DUMMY if dummy_text or action in "DC" else WALK
    if action == "K":
        if vr in DATE_VRS and shifting:
            return SHIFT
        if dummy_text and vr in FREE_TEXT_VRS:
            return DUMMY
        return DROP if dummy_text and vr == "UN" else KEEP
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
        # shifted and must not be kept as it is.
        return KEEP if vr == "TM" else DUMMY
    if action == "C" and vr in BULK_VRS:
        return BLANK  # e.g. Overlay Data: zeros of the same length keep the overlay valid and empty
    return DUMMY


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

    def map(self, tag: int, value: str) -> list[str]:
        new = []
        for uid in (v.strip(" \0") for v in value.split("\\")):
            if uid:
                if not uid.isascii():
                    raise DeidError("malformed", f"a UID of {name(tag)} holds bytes outside ASCII")
                if uid not in self.uid_map:
                    self.uid_map[uid] = new_uid(self.key, uid)
                    self.uid_attributes[uid] = tag
                new.append(self.uid_map[uid])
        return new


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
