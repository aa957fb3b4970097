"""Which PS3.15 Annex E options are in force, as the reference library names them."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


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

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"profile flag {f.name} must be True or False")


FLAGS: tuple[str, ...] = tuple(f.name for f in fields(Profile))


def basic_profile() -> Profile:
    """The Basic Profile with no option: the most conservative setting."""
    return Profile()


def resolve(profile: Profile | None, flags: dict[str, bool]) -> Profile:
    """Merge flags given directly over a profile; an unknown flag is an error that names it."""
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise TypeError(f"unknown profile flag(s): {', '.join(unknown)}; known: {', '.join(FLAGS)}")
    return replace(profile or basic_profile(), **flags)
