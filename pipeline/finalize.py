"""Stage 5: compact the units' table parts and write the run summary a person reads first."""

from __future__ import annotations

import hashlib
import json

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .storage import filesystem, retry
from .tables import MANIFEST_SCHEMA, compact, put_bytes, remove_stale_temporaries

PRIVATE_TABLES = ("manifest", "uid_map", "quarantine")
INDEX_FOLDER = "_index"
SUMMARY_NAME = "summary.json"


def _manifest_counts(fs, path: str) -> dict:
    """Totals over every committed unit, read from the compacted manifest."""
    with fs.open(path, "rb") as f:
        manifest = pq.read_table(f, columns=["status", "reason", "source_size", "output_size"],
                                 schema=MANIFEST_SCHEMA)
    quarantined = pc.equal(manifest["status"], "quarantined")
    reasons = manifest.filter(quarantined)["reason"].value_counts().to_pylist()
    count = pc.sum(quarantined).as_py() or 0
    return {
        "objects": manifest.num_rows,
        "written": manifest.num_rows - count,
        "quarantined": count,
        "source_bytes": pc.sum(manifest["source_size"]).as_py() or 0,
        "output_bytes": pc.sum(manifest["output_size"]).as_py() or 0,
        "quarantine_reasons": dict(sorted((r["values"], r["counts"]) for r in reasons)),
    }


def finalize(tables: str, dest: str, storage_options: dict | None, *, run: dict) -> dict:
    """Compact parts into TABLES/<table>.parquet and DEST/_index/; write and return the summary.

    `run` holds what only the driver knows: units total/run/skipped/failed, objects and bytes this run,
    and elapsed seconds.
    """
    tables_fs, tables_path = filesystem(tables, storage_options)
    dest_fs, dest_path = filesystem(dest, storage_options)
    for fs, path in ((tables_fs, tables_path), (dest_fs, dest_path)):
        remove_stale_temporaries(fs, path)
    for name in PRIVATE_TABLES:
        compact(tables_fs, tables_path, name, tables_fs, f"{tables_path}/{name}.parquet")
    compact(tables_fs, tables_path, "index", dest_fs, index_path(dest_path, tables))
    elapsed = max(run["elapsed"], 1e-9)
    summary = {
        "source": run["source"], "dest": dest, "tables": tables,
        **_manifest_counts(tables_fs, f"{tables_path}/manifest.parquet"),
        "units_total": run["units_total"], "units_done": run["units_total"] - len(run["failed_units"]),
        "units_run": run["units_run"], "units_skipped": run["units_skipped"],
        "failed_units": run["failed_units"],
        "this_run": {"objects": run["objects"], "source_bytes": run["source_bytes"],
                     "elapsed_seconds": round(elapsed, 3),
                     "objects_per_second": round(run["objects"] / elapsed, 2),
                     "megabytes_per_second": round(run["source_bytes"] / elapsed / 1e6, 2)},
    }
    put_bytes(tables_fs, f"{tables_path}/{SUMMARY_NAME}", json.dumps(summary, indent=2).encode())
    return summary


def index_path(dest_path: str, tables: str) -> str:
    """This job's file of the DEST index: jobs writing into one DEST each add a file, none replaces one."""
    job = hashlib.sha256(tables.encode()).hexdigest()[:16]
    return f"{dest_path}/{INDEX_FOLDER}/{job}.parquet"


def read_summary(tables: str, storage_options: dict | None = None) -> dict | None:
    """The summary a finished run left in TABLES, or None."""
    fs, path = filesystem(tables, storage_options)
    summary = f"{path}/{SUMMARY_NAME}"
    fs.invalidate_cache(path)
    return json.loads(retry(fs.cat_file, summary)) if retry(fs.exists, summary) else None


def describe(summary: dict, this_run: bool = True) -> str:
    """A few lines for a person: what happened and where it went; `this_run=False` leaves out the line
    about the run that wrote the summary, for a later run that did nothing."""
    lines = [
        f"objects: {summary['objects']}  written: {summary['written']}  "
        f"quarantined: {summary['quarantined']}",
        f"units: {summary['units_done']}/{summary['units_total']} done",
    ]
    if this_run:
        lines[-1] += f" ({summary['units_run']} this run, {summary['units_skipped']} already committed)"
    if summary["failed_units"]:
        lines.append(f"FAILED units (re-run to retry): {len(summary['failed_units'])}")
    latest = summary["this_run"]
    if this_run:
        lines.append(f"this run: {latest['objects']} objects in {latest['elapsed_seconds']:.1f} s "
                     f"({latest['objects_per_second']:.1f} objects/s, "
                     f"{latest['megabytes_per_second']:.1f} MB/s)")
    if summary["quarantine_reasons"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in summary["quarantine_reasons"].items())
        lines.append(f"quarantine reasons: {reasons}")
    lines.append(f"de-identified output: {summary['dest']}  (Parquet index: {INDEX_FOLDER}/)")
    lines.append(f"private tables: {summary['tables']}  (keep these safe: they link back to the source)")
    return "\n".join(lines)
