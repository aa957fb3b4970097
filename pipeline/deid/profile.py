"""Which PS3.15 Annex E options are in force, as the reference library names them."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

# What happens to attributes Table E.1-1 does not list: the safety net (person names emptied, UIDs
# replaced, see unlisted.py), `remove` (also every one the IOD does not require), or `keep` (the
# table alone, as the standard's Basic Profile has it).
UNLISTED_MODES = ("safety-net", "remove", "keep")


@dataclass(frozen=True)
class Profile:
    """Boolean options over the Basic Application Level Confidentiality Profile."""

    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_patient_characteristics: bool = False
    retain_institution_identity: bool = False
    retain_long_full_dates: bool = False
    retain_long_modified_dates: bool = False
    clean_descriptions: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    retain_private_tags: bool = False
    retain_safe_private: bool = False
    unlisted: str = "safety-net"

    def __post_init__(self) -> None:
        for name in FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"profile flag {name} must be True or False")
        if self.unlisted not in UNLISTED_MODES:
            raise ValueError(f"unlisted must be one of {', '.join(UNLISTED_MODES)}, not {self.unlisted!r}")


# The boolean options; `unlisted` is a setting of its own.
FLAGS: tuple[str, ...] = tuple(f.name for f in fields(Profile) if f.name != "unlisted")


def basic_profile() -> Profile:
    """The Basic Profile with no option: the most conservative setting."""
    return Profile()


def resolve(profile: Profile | None, flags: dict[str, bool]) -> Profile:
    """Merge flags given directly over a profile; an unknown flag is an error that names it."""
    unknown = sorted(set(flags) - {*FLAGS, "unlisted"})
    if unknown:
        raise TypeError(f"unknown profile flag(s): {', '.join(unknown)}; known: {', '.join(FLAGS)}")
    if not flags:  # a frozen profile as it is: no copy to make and check again for every object
        return profile or basic_profile()
    return replace(profile or basic_profile(), **flags)
