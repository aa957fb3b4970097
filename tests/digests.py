"""A fixed archive and the digest of all a run makes of it, so that outputs never change by accident."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
from pydicom.data import get_testdata_file
from samples import encode, generated_deep

DIGESTS = Path(__file__).resolve().parent / "data" / "output_digests.tsv"
_ROOT = "1.2.826.0.1.3680043.10.1299"  # fixed UIDs, so the archive is the same bytes on every machine


def fixed_archive(root: Path) -> None:
    """pydicom's own test files as shipped, two generated studies with fixed UIDs, a copy and poison."""
    bundled = Path(get_testdata_file("CT_small.dcm")).parent
    shutil.copytree(bundled, root / "bundled")
    template = pydicom.dcmread(bundled / "CT_small.dcm")
    for s in range(2):
        for i in range(3):
            ds = copy.deepcopy(template)
            ds.PatientName, ds.PatientID = f"Fixed^Patient{s}", f"FIXED-{s}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{_ROOT}.{s}", f"{_ROOT}.{s}.1"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{_ROOT}.{s}.1.{i}"
            ds.InstanceNumber = i + 1
            path = root / "studies" / f"{s}" / f"{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(ds))
    (root / "studies" / "copy.dcm").write_bytes((root / "studies" / "0" / "0.dcm").read_bytes())
    whole = (root / "studies" / "1" / "0.dcm").read_bytes()
    poison = {"empty.dcm": b"", "notes.txt": b"not DICOM\n" * 20, "truncated.dcm": whole[:len(whole) // 2],
              "deep.dcm": generated_deep()}
    (root / "poison").mkdir()
    for name, data in poison.items():
        (root / "poison" / name).write_bytes(data)


def run_digests(source: Path, dest: Path, tables: Path) -> list[str]:
    """One line per source object: its path, then its output key and the output's sha256, or its
    quarantine reason."""
    manifest = pq.read_table(tables / "manifest.parquet").to_pylist()
    lines = []
    for row in manifest:
        name = Path(row["source_url"].removeprefix("file://")).relative_to(source).as_posix()
        if row["status"] == "written":
            digest = hashlib.sha256((dest / row["output_key"]).read_bytes()).hexdigest()
            lines.append(f"{name}\t{row['output_key']}\t{digest}")
        else:
            lines.append(f"{name}\tquarantined\t{row['reason']}")
    return sorted(lines)
