"""Patients across a study's objects: one date-shift identity per study, recorded in the run's plan, and
the research IDs (keyed pseudonyms or a crosswalk) that replace Patient ID and Patient's Name."""

from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .deid import Pseudonym
from .deid.keys import patient_pseudonym
from .plan import _study_starts
from .storage import filesystem, retry

CROSSWALK_COLUMNS = ("patient_id", "research_id", "research_name")  # the last is optional
_MAX_LO, _MAX_PN = 64, 64


class CrosswalkError(ValueError):
    """A crosswalk that cannot be used as written; the message names rows and columns, never values."""


def shift_identities(planned: pa.Table, earlier: pa.Table) -> pa.Array:
    """Per planned row, the patient identity that keys its study's date shift (bytes, as the engine's
    `patient_identity` builds them): the one an earlier run recorded for the study; else the first
    non-empty Patient ID of the study's rows in url order, with that row's Issuer of Patient ID; else the
    Study Instance UID. A row without a study is a study of its own. `earlier` holds the study_uid and
    shift_identity of earlier runs' rows."""
    urls = planned["url"].cast(pa.string())
    study = pc.coalesce(planned["study_uid"].cast(pa.string()),
                        pc.binary_join_element_wise("\0url", urls, "\0"))  # UIDs never hold a NUL
    rows = pa.table({"study": study, "url": urls, "patient_id": planned["patient_id"].cast(pa.string()),
                     "issuer": pc.fill_null(planned["issuer_of_patient_id"].cast(pa.string()), "")})
    with_id = rows.filter(pc.not_equal(pc.fill_null(rows["patient_id"], ""), ""))
    with_id = with_id.sort_by([("study", "ascending"), ("url", "ascending")])
    first = with_id.take(_study_starts(with_id["study"])) if with_id.num_rows else with_id
    by_patient = pc.binary_join_element_wise("id", first["patient_id"], first["issuer"], "\0")
    decided = pc.take(by_patient, pc.index_in(study, value_set=first["study"]))
    decided = pc.coalesce(decided, pc.binary_join_element_wise("study", study, "\0"))
    # Earlier rows of this plan's studies only: a small hash table, probed by the archive's rows.
    ours = pc.is_in(earlier["study_uid"], value_set=planned["study_uid"], skip_nulls=True)
    known = earlier.filter(pc.and_(ours, pc.is_valid(earlier["shift_identity"])))
    at = pc.index_in(study, value_set=known["study_uid"].cast(pa.string()), skip_nulls=True)
    recorded = pc.take(known["shift_identity"], at)
    return pc.coalesce(recorded, decided.cast(pa.binary()))


def patient_of(identity: bytes | None) -> tuple[str, str] | None:
    """(Patient ID, issuer) of an identity decided by a Patient ID, else None."""
    if not identity or not identity.startswith(b"id\0"):
        return None
    patient_id, _, issuer = identity[3:].partition(b"\0")
    return patient_id.decode("utf-8"), issuer.decode("utf-8")


def _valid(text: str, limit: int) -> bool:
    return 0 < len(text) <= limit and text.isascii() and text.isprintable() and "\\" not in text


def read_crosswalk(url: str, storage_options: dict | None = None) -> dict[str, tuple[str, str]]:
    """Original Patient ID -> (research ID, research name) from a CSV or Parquet file with columns
    patient_id, research_id and optionally research_name (default: the research ID)."""
    fs, path = filesystem(url, storage_options)
    data = retry(fs.cat_file, path)
    if path.endswith((".parquet", ".pq")):
        table = pq.read_table(io.BytesIO(data))
        rows = table.select([c for c in CROSSWALK_COLUMNS if c in table.column_names]).to_pylist() \
            if {"patient_id", "research_id"} <= set(table.column_names) else None
    else:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        rows = list(reader) if {"patient_id", "research_id"} <= set(reader.fieldnames or ()) else None
    if rows is None:
        raise CrosswalkError("the crosswalk needs columns patient_id and research_id (and may have "
                             "research_name)")
    found: dict[str, tuple[str, str]] = {}
    for number, row in enumerate(rows, start=1):
        original = str(row["patient_id"] or "").strip()
        research = str(row["research_id"] or "").strip()
        name = str(row.get("research_name") or "").strip() or research
        if not original:
            raise CrosswalkError(f"crosswalk row {number}: empty patient_id")
        if not _valid(research, _MAX_LO) or not _valid(name, _MAX_PN):
            raise CrosswalkError(f"crosswalk row {number}: research_id and research_name must be 1 to 64 "
                                 "printable ASCII characters without a backslash")
        if found.setdefault(original, (research, name)) != (research, name):
            raise CrosswalkError(f"crosswalk row {number}: a patient_id given before with another research "
                                 "ID or name")
    return found


def with_crosswalk(planned: pa.Table, crosswalk: dict[str, tuple[str, str]]) -> pa.Table:
    """The plan with research_id and research_name columns where the crosswalk has its study's patient
    (null elsewhere), so each unit carries only its own patients' rows."""
    identities = planned["shift_identity"]
    unique = pc.unique(identities).to_pylist()
    pairs = [crosswalk.get((patient_of(identity) or ("",))[0]) for identity in unique]
    at = pc.index_in(identities, value_set=pa.array(unique, pa.binary()))
    for column, part in (("research_id", 0), ("research_name", 1)):
        values = pa.array([pair[part] if pair else None for pair in pairs], pa.string())
        planned = planned.append_column(column, pc.take(values, at))
    return planned


def pseudonym_for(row: dict, key: bytes) -> Pseudonym:
    """The research ID and name of a unit row's patient: the crosswalk's where it has a row, else a keyed
    pseudonym of the study's identity (the same in every worker and run)."""
    if row.get("research_id"):
        return Pseudonym(row["research_id"], row.get("research_name") or row["research_id"])
    identity = row.get("shift_identity") or b"url\0" + row["url"].encode("utf-8")
    pseudonym = patient_pseudonym(key, identity)
    return Pseudonym(pseudonym, pseudonym)


def patient_row(row: dict, pseudonym: Pseudonym, unit_id: str) -> dict | None:
    """The patient map's row for a written object of a study decided by a Patient ID, else None."""
    patient = patient_of(row.get("shift_identity"))
    if patient is None:
        return None
    return {"original_patient_id": patient[0], "original_issuer": patient[1] or None,
            "new_patient_id": pseudonym.patient_id, "new_patient_name": pseudonym.patient_name,
            "source": "crosswalk" if row.get("research_id") else "pseudonym", "unit_id": unit_id}
