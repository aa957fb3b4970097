"""`dicom-deid export-maps`: the UID and patient maps as `id_old,id_new` CSV, as de-identification
benchmarks (MIDI-B) read them."""

from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor

import pyarrow.compute as pc
import pydicom

from .job import JOB_NAME, JobError, absolute
from .runs import every_planned, stored_runs
from .storage import filesystem, retry
from .tables import MANIFEST_SCHEMA, PATIENT_MAP_SCHEMA, UID_MAP_SCHEMA, put_bytes, read_table

HEADER_BYTES = 2**16  # a header's Patient ID lies well inside its first 64 KiB
_THREADS = 16


def _csv(pairs: list[tuple[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("id_old", "id_new"))
    writer.writerows(pairs)
    return buffer.getvalue().encode("utf-8")


def _patient_id(fs, path: str) -> str:
    """The Patient ID an output carries, read from its first bytes."""
    with fs.open(path, "rb", block_size=HEADER_BYTES) as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"])
    return str(ds.get("PatientID") or "")


def export_maps(tables: str, out: str, storage_options: dict | None = None) -> dict[str, int]:
    """Write OUT/uid_map.csv and OUT/patient_map.csv; return each file's row count.

    The patient map pairs each original Patient ID with the Patient ID its outputs carry. A job that
    pseudonymized patients holds that map in TABLES/patient_map.parquet (each study's patient and its
    research ID); otherwise each original Patient ID the runs' plans hold is paired with the Patient ID
    its first written output (by key) carries: what the run wrote, whatever the profile did to it (the
    Basic Profile empties it). Patients none of whose objects was written are left out.
    """
    fs, path = filesystem(absolute(tables), storage_options)
    if not retry(fs.exists, f"{path}/{JOB_NAME}") or not retry(fs.exists, f"{path}/manifest.parquet"):
        raise JobError(f"no finished dicom-deid run in {tables}")
    job = json.loads(retry(fs.cat_file, f"{path}/{JOB_NAME}"))
    uids = read_table(fs, f"{path}/uid_map.parquet", UID_MAP_SCHEMA)
    uid_pairs = sorted({(r["original_uid"], r["new_uid"]) for r in uids.select(["original_uid", "new_uid"])
                        .to_pylist()})
    if job.get("pseudonymize_patients"):
        patients = read_table(fs, f"{path}/patient_map.parquet", PATIENT_MAP_SCHEMA)
        patient_pairs = sorted(set(zip(patients["original_patient_id"].to_pylist(),
                                       patients["new_patient_id"].to_pylist(), strict=True)))
    else:
        patient_pairs = _written_patient_ids(fs, path, job, storage_options)
    out_fs, out_path = filesystem(absolute(out), storage_options)
    retry(out_fs.makedirs, out_path, exist_ok=True)
    put_bytes(out_fs, f"{out_path}/uid_map.csv", _csv(uid_pairs))
    put_bytes(out_fs, f"{out_path}/patient_map.csv", _csv(patient_pairs))
    return {"uid_map.csv": len(uid_pairs), "patient_map.csv": len(patient_pairs)}


def _written_patient_ids(fs, path: str, job: dict, storage_options: dict | None) -> list[tuple[str, str]]:
    """Each planned original Patient ID with the Patient ID its first written output carries."""
    manifest = read_table(fs, f"{path}/manifest.parquet", MANIFEST_SCHEMA)
    written = manifest.filter(pc.equal(manifest["status"], "written"))
    key_of = dict(zip(written["source_url"].to_pylist(), written["output_key"].to_pylist(), strict=True))
    # Each object as the last run that planned it saw it (an earlier run may have seen another version).
    inventory = {r["url"]: r["patient_id"]
                 for r in every_planned(fs, path, stored_runs(fs, path), ["url", "patient_id"]).to_pylist()}
    first_key: dict[str, str] = {}
    for url, patient in inventory.items():
        key = key_of.get(url)
        if patient and key and key < first_key.get(patient, "\uffff"):
            first_key[patient] = key
    dest_fs, dest_path = filesystem(job["dest"], storage_options)
    with ThreadPoolExecutor(_THREADS) as pool:
        new_ids = pool.map(lambda key: retry(_patient_id, dest_fs, f"{dest_path}/{key}"), first_key.values())
        return sorted(zip(first_key, new_ids, strict=True))
