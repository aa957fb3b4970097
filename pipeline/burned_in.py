"""The burned-in guard: objects whose pixels may show patient text are quarantined unless allowed."""

from __future__ import annotations

from pydicom.uid import UID_dictionary

REASON = "burned-in-annotation"
UNKNOWN_CHOICES = ("quarantine", "allow")
# SOP classes (pydicom's UID dictionary keywords) whose pixels often carry burned-in text: screen and
# secondary captures, ultrasound, video and visible-light captures, printed and scanned documents.
BURNED_IN_KEYWORDS = (
    "SecondaryCaptureImageStorage",
    "MultiFrameSingleBitSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage",
    "UltrasoundImageStorage",
    "UltrasoundMultiFrameImageStorage",
    "UltrasoundImageStorageRetired",
    "UltrasoundMultiFrameImageStorageRetired",
    "VideoEndoscopicImageStorage",
    "VideoMicroscopicImageStorage",
    "VideoPhotographicImageStorage",
    "VLEndoscopicImageStorage",
    "VLPhotographicImageStorage",
    "HardcopyGrayscaleImageStorage",
    "HardcopyColorImageStorage",
    "EncapsulatedPDFStorage",
    "EncapsulatedCDAStorage",
)
BURNED_IN_CLASSES = {uid: entry[0] for uid, entry in UID_dictionary.items() if entry[4] in BURNED_IN_KEYWORDS}


def refusal(sop_class: str | None, burned_in: str | None, *, allow: bool, unknown: str) -> str | None:
    """Why an object must be quarantined as `burned-in-annotation`, else None.

    Burned In Annotation YES is refused unless `allow`; an object of a BURNED_IN_CLASSES class without a
    YES or NO follows `unknown` ("quarantine" or "allow"), and `allow` lets it through as well."""
    said = (burned_in or "").strip(" \0").upper()
    if allow or said == "NO":
        return None
    if said == "YES":
        return "Burned In Annotation is YES: text may show in the pixels (--allow-burned-in writes it)"
    name = BURNED_IN_CLASSES.get((sop_class or "").strip(" \0"))
    if name and unknown == "quarantine":
        return (f"{name} without Burned In Annotation YES or NO: such objects often show text in the pixels "
                "(--burned-in-unknown allow writes them)")
    return None
