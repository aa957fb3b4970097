"""Seed files with distinctive identifying values planted at several depths, so leaks are found by bytes."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.deid import Profile

ROOT = "1.3.6.1.4.1.58263.9"
BUNDLED = Path(pydicom.data.__file__).parent / "test_files"
# Small little-endian files of varied shape: CT/MR, implicit VR, RT, SR, encapsulated, private sequences.
BUNDLED_SEEDS = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "rtdose_1frame.dcm",
                 "reportsi.dcm", "test-SR.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "GDCMJ2K_TextGBR.dcm",
                 "nested_priv_SQ.dcm", "priv_SQ.dcm", "UN_sequence.dcm", "SC_rgb_small_odd.dcm")
LENGTH_MODES = ("undefined", "defined")


@dataclass(frozen=True)
class Needle:
    """A planted value: its bytes, where it was planted, and the profile flag that keeps it on purpose."""

    value: bytes
    where: str
    kept_by: str | None = None


def _person(value: str, where: str) -> list[Needle]:
    """A person name is identifying as a whole and by each of its components."""
    return [Needle(part.encode(), where) for part in value.split("^")]


NAME, OPERATOR, PERFORMER, NUCLIDE_OPERATOR = ("ZQXNAME^ZQXGIVEN", "ZQXOPER^ZQXOPFIRST",
                                               "ZQXPERF^ZQXPFGIVEN", "ZQXNUC^ZQXNCGIVEN")
REFERRER = "ZQXREFDOC^ZQXRDGIVEN"
TOP_TEXT = {"PatientName": NAME, "PatientID": "ZQXPID4417", "AccessionNumber": "ZQXACC9921",
            "StudyID": "ZQXSTUDY7", "ReferringPhysicianName": REFERRER,
            "InstitutionName": "ZQXHOSPITAL", "StationName": "ZQXSTATION"}
# Dates at least ten years apart, so a date shifted back (1 to 3650 days) never equals another one.
TOP_DATES = {"PatientBirthDate": "18930517", "StudyDate": "19220304", "ContentDate": "19520811"}
START_DATETIME = "19810609101010.000000"
UIDS = {"StudyInstanceUID": f"{ROOT}.1", "SeriesInstanceUID": f"{ROOT}.2", "SOPInstanceUID": f"{ROOT}.3",
        "FrameOfReferenceUID": f"{ROOT}.4"}
REF_SERIES, REF_SOP, NESTED_REF_SOP, SOURCE_SOP = (f"{ROOT}.5", f"{ROOT}.6", f"{ROOT}.7", f"{ROOT}.8")

NEEDLES: tuple[Needle, ...] = (
    *_person(NAME, "PatientName"), *_person(REFERRER, "ReferringPhysicianName"),
    *_person(OPERATOR, "OperatorsName in sequence items"),
    *_person(PERFORMER, "PerformingPhysicianName at depth 2"),
    *_person(NUCLIDE_OPERATOR, "OperatorsName at depth 2"),
    Needle(b"ZQXPID4417", "PatientID"), Needle(b"ZQXACC9921", "AccessionNumber"),
    Needle(b"ZQXSTUDY7", "StudyID"),
    Needle(b"ZQXHOSPITAL", "InstitutionName", "retain_institution_identity"),
    Needle(b"ZQXSTATION", "StationName", "retain_device_identity"),
    Needle(b"18930517", "PatientBirthDate"),
    Needle(b"19220304", "StudyDate", "retain_long_full_dates"),
    Needle(b"19520811", "ContentDate", "retain_long_full_dates"),
    Needle(b"19810609", "RadiopharmaceuticalStartDateTime at depth 1", "retain_long_full_dates"),
    *(Needle(uid.encode(), keyword, "retain_uids") for keyword, uid in UIDS.items()),
    Needle(REF_SERIES.encode(), "SeriesInstanceUID at depth 1", "retain_uids"),
    Needle(REF_SOP.encode(), "ReferencedSOPInstanceUID in sequence items", "retain_uids"),
    Needle(NESTED_REF_SOP.encode(), "ReferencedSOPInstanceUID at depth 2", "retain_uids"),
    Needle(SOURCE_SOP.encode(), "ReferencedSOPInstanceUID in Source Image Sequence", "retain_uids"),
)


def needles_for(profile: Profile) -> list[Needle]:
    """The planted values that must not occur in an output made under `profile`."""
    return [n for n in NEEDLES if not (n.kept_by and getattr(profile, n.kept_by))]


@dataclass(frozen=True)
class Seed:
    """A planted seed file; `name` is how reproducers refer to it."""

    name: str
    data: bytes = field(repr=False)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99ZQX", meaning
    return item


def _planted_sequences() -> dict[str, Sequence]:
    """Public sequences the engine walks (K), plus one it removes, each holding planted values."""
    inner = Dataset()
    inner.SeriesInstanceUID, inner.ReferencedSOPInstanceUID = REF_SERIES, NESTED_REF_SOP
    inner.PerformingPhysicianName = PERFORMER
    protocol = _code("ZP1", "fuzz protocol")
    protocol.OperatorsName = OPERATOR
    protocol.ReferencedSeriesSequence = Sequence([inner])
    nuclide = _code("C-B1031", "Fluorine^18")
    nuclide.OperatorsName = NUCLIDE_OPERATOR
    nuclide.ReferencedSOPInstanceUID = NESTED_REF_SOP
    pharma = Dataset()
    pharma.Radiopharmaceutical = "Fluorodeoxyglucose"
    pharma.RadiopharmaceuticalStartDateTime = START_DATETIME
    pharma.RadionuclideTotalDose, pharma.RadionuclideHalfLife = "370000000", "6586.2"
    pharma.RadionuclideCodeSequence = Sequence([nuclide])
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedSOPInstanceUID = REF_SERIES, REF_SOP
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", SOURCE_SOP
    return {"PerformedProtocolCodeSequence": Sequence([protocol]),
            "RadiopharmaceuticalInformationSequence": Sequence([pharma]),
            "ReferencedSeriesSequence": Sequence([series]), "SourceImageSequence": Sequence([source])}


def _plant_items(ds: Dataset, depth: int = 0) -> None:
    """Into public sequences already in the file: planted referenced UIDs and an operator's name."""
    for elem in ds:
        if elem.VR != "SQ" or elem.tag.is_private or depth > 3:
            continue
        for index, item in enumerate(elem.value):
            if "ReferencedSOPInstanceUID" in item:
                item.ReferencedSOPInstanceUID = REF_SOP
            if index == 0:
                item.OperatorsName = OPERATOR
            _plant_items(item, depth + 1)


def plant(ds: Dataset) -> Dataset:
    """Overwrite identifying attributes with the planted values and add the planted sequences."""
    _plant_items(ds, 0)
    for keyword, value in {**TOP_TEXT, **TOP_DATES, **UIDS}.items():
        setattr(ds, keyword, value)
    for keyword, value in _planted_sequences().items():
        setattr(ds, keyword, value)
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    if "SliceThickness" not in ds:
        ds.SliceThickness = "1.25"
    return ds


def _set_lengths(ds: Dataset, mode: str) -> None:
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = mode == "undefined"
            for item in elem.value:
                item.is_undefined_length_sequence_item = mode == "undefined"


def encode(ds: Dataset, mode: str) -> bytes:
    """The planted dataset as a file, sequences and items all of undefined or all of defined length."""
    _set_lengths(ds, mode)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    syntax = meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_little_endian or syntax.is_deflated:
        implicit = syntax is not None and syntax.is_implicit_VR
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax.is_implicit_VR, little_endian=True)
    return buffer.getvalue()


def generated() -> dict[str, Dataset]:
    """Seeds made here: a small image whose only content is planted, and one with a deep planted SR tree."""
    image = Dataset()
    image.SpecificCharacterSet = "ISO_IR 100"
    image.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    image.Modality, image.Manufacturer = "PT", "ZQX fuzz"
    image.Rows = image.Columns = 4
    image.BitsAllocated = image.BitsStored = 8
    image.HighBit, image.PixelRepresentation, image.SamplesPerPixel = 7, 0, 1
    image.PhotometricInterpretation = "MONOCHROME2"
    image.PixelData = bytes(range(16))
    report = Dataset()
    report.Modality, report.SOPClassUID = "SR", "1.2.840.10008.5.1.4.1.1.88.22"
    node = Dataset()
    node.ValueType, node.PersonName = "PNAME", OPERATOR
    for level in range(6):
        parent = Dataset()
        parent.RelationshipType, parent.ValueType = "CONTAINS", "CONTAINER"
        parent.ConceptNameCodeSequence = Sequence([_code(f"ZC{level}", "section")])
        parent.ContentSequence = Sequence([node])
        node = parent
    report.ContentSequence = node.ContentSequence
    return {"generated:image": image, "generated:report": report}


def _load(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _variants(name: str, load) -> list[Seed]:
    """One seed per length mode; a source pydicom cannot read or re-encode gives none."""
    seeds = []
    for mode in LENGTH_MODES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seeds.append(Seed(f"{name}@{mode}", encode(plant(load()), mode)))
        except Exception:  # a corpus file pydicom cannot re-encode is simply not a seed
            continue
    return seeds


def bundled_seeds() -> list[Seed]:
    """Seeds from pydicom's own test files and from datasets built here; always available."""
    seeds = []
    for name in BUNDLED_SEEDS:
        seeds += _variants(f"pydicom:{name}", lambda n=name: _load(BUNDLED / n))
    for name in generated():
        seeds += _variants(name, lambda n=name: generated()[n])
    return seeds


def corpus_seeds(root: Path, max_bytes: int) -> list[Seed]:
    """Seeds from a local corpus folder (never copied anywhere): its DICOM files up to max_bytes."""
    seeds = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size <= max_bytes):
        with open(path, "rb") as f:
            if f.read(132)[128:] != b"DICM":  # licences, manifests, files without a preamble
                continue
        seeds += _variants(f"corpus:{path.relative_to(root)}", lambda p=path: _load(p))
    return seeds


def by_name(name: str, corpus: Path | None = None) -> Seed:
    """Rebuild one seed from its name, as a reproducer gives it."""
    source, _, _ = name.rpartition("@")
    kind, _, rest = source.partition(":")
    if kind == "pydicom":
        seeds = _variants(source, lambda: _load(BUNDLED / rest))
    elif kind == "generated":
        seeds = _variants(source, lambda: generated()[source])
    elif corpus is None:
        raise ValueError(f"{name} comes from a corpus: give --corpus DIR")
    else:
        seeds = _variants(source, lambda: _load(corpus / rest))
    return next(seed for seed in seeds if seed.name == name)
