"""DICOM archives made in the test (always available) and checks on what a run left behind."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
DEEP_CORPUS_FILE = CORPUS / "orthanc-tests" / "2026-05-06-Deeply-Nested-Sequence.dcm"
PATIENT_NAME = "Doe^Janet^Q"
PATIENT_ID = "PID-7731-XYZ"
SECRET = b"test-secret-do-not-leak-0123456789"


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study_objects(studies: int, per_study: int, seed: str = "") -> dict[str, bytes]:
    """`studies` studies of `per_study` CT objects each, named like a hospital export (name, ID in path)."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    files = {}
    for s in range(studies):
        study, series = generate_uid(), generate_uid()
        for i in range(per_study):
            ds = copy.deepcopy(template)
            ds.PatientName, ds.PatientID = f"{PATIENT_NAME}{seed}{s}", f"{PATIENT_ID}{seed}{s}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            files[f"{PATIENT_ID}{seed}{s}/study{s}/img{i:03d}.dcm"] = encode(ds)
    return files


def deeply_nested() -> bytes:
    """The corpus's hostile file when present, else a generated object nested far past any sane depth."""
    return DEEP_CORPUS_FILE.read_bytes() if DEEP_CORPUS_FILE.exists() else generated_deep()


def generated_deep() -> bytes:
    """CT_small with 200 nested Content Sequences: past the depth limit, the same bytes everywhere."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    inner = Dataset()
    inner.CodeMeaning = "bottom"
    for _ in range(200):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    return encode(ds)


def poison_objects() -> dict[str, tuple[bytes, set[str]]]:
    """Objects no run may fail on: name -> (bytes, acceptable quarantine reasons)."""
    good = study_objects(1, 1, seed="poison")
    whole = next(iter(good.values()))
    return {
        "poison/empty.dcm": (b"", {"empty"}),
        "poison/notes.txt": (b"this is not a DICOM file at all\n" * 20, {"not-dicom"}),
        "poison/truncated.dcm": (whole[:len(whole) // 2], {"truncated", "unreadable"}),
        "poison/deep.dcm": (deeply_nested(), {"too-deep"}),
    }


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def original_uids(files: dict[str, bytes]) -> set[str]:
    """Every instance UID (not standard class or syntax UIDs) in the given objects."""
    found = set()
    for data in files.values():
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception:
            continue
        for elem in [*ds.file_meta.iterall(), *ds.iterall()] if hasattr(ds, "file_meta") else ds.iterall():
            if elem.VR == "UI" and elem.value:
                values = elem.value if isinstance(elem.value, list) else [elem.value]
                found.update(str(v) for v in values if not str(v).startswith("1.2.840.10008."))
    return found


def identifying_strings(files: dict[str, bytes]) -> set[bytes]:
    """Byte strings that must never appear in DEST: instance UIDs and the patients' names and IDs."""
    values = {uid.encode() for uid in original_uids(files)}
    return values | {PATIENT_NAME.encode(), PATIENT_ID.encode()}


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def dataset_values(ds) -> dict:
    """Every value at every depth, for comparing two encodings of the same content."""
    found = {}
    for tag in ds.keys():
        elem = ds[tag]
        found[tag] = ([dataset_values(item) for item in elem.value] if elem.VR == "SQ"
                      else list(elem.value) if elem.VM > 1 else elem.value)
    return found
