"""PS3.15 Annex E de-identification of one DICOM dataset; no storage, no scheduling."""

from .engine import Result, apply, deidentify
from .errors import DeidError
from .operations import Pseudonym
from .parse import parse, serialize
from .profile import FLAGS, Profile, basic_profile
from .rules import action_for

__all__ = ["FLAGS", "DeidError", "Profile", "Pseudonym", "Result", "action_for", "apply", "basic_profile",
           "deidentify", "parse", "serialize"]
