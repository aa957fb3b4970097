"""`dicom-deid verify`: prove from what a finished run left behind that nothing leaked and nothing was lost."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import pyarrow as pa

from .audit import check_unit, dciodvfy_available
from .finalize import INDEX_FOLDER, SUMMARY_NAME, index_path
from .job import JOB_NAME, JobError, absolute, cluster
from .storage import filesystem, retry
from .tables import MANIFEST_SCHEMA, QUARANTINE_SCHEMA, UID_MAP_SCHEMA, put_bytes, read_table, write_table

REPORT_FOLDER = "verify"
PARALLEL_ABOVE = 1000  # objects; fewer are checked in this process, faster than starting workers
VALIDITY_LIMIT = 100  # objects run through dciodvfy (twice: output and source), spread over the run
REPORT_SCHEMA = pa.schema([
    ("source_url", pa.string()),
    ("output_key", pa.string()),
    ("status", pa.string()),
    ("source_checked", pa.bool_()),
    ("leaks", pa.int32()),
    ("leak_attributes", pa.string()),
    ("leak_places", pa.string()),
    ("profile_errors", pa.string()),
    ("completeness", pa.string()),
    ("inconsistent_attributes", pa.string()),
    ("dangling_references", pa.int32()),
    ("references_to_quarantined", pa.int32()),
    ("validity_new_errors", pa.int32()),
])
# Totals that make verification fail; the others are information.
FAILING = ("leaks", "profile_errors", "lost", "unaccounted", "inconsistencies")


@dataclass(frozen=True)
class Verification:
    """Totals of one verification and where its per-object report went."""

    totals: dict
    report: str

    @property
    def ok(self) -> bool:
        return not any(self.totals[name] for name in FAILING)

    def describe(self) -> str:
        t = self.totals
        lines = [f"verify: {'OK' if self.ok else 'FAILED'}: {t['objects']} objects, {t['outputs']} outputs "
                 f"({t['source_checked']} against their source), {t['quarantined']} quarantined",
                 f"  leaks: {t['leaks']} objects  profile errors: {t['profile_errors']}  lost: {t['lost']}  "
                 f"unaccounted outputs/rows: {t['unaccounted']}  inconsistencies: {t['inconsistencies']}",
                 f"  references: {t['references_external']} to objects never in SOURCE, "
                 f"{t['references_to_quarantined']} to quarantined objects (not counted)"]
        if t["validity_checked"]:
            lines.append(f"  validity (dciodvfy): {t['validity_regressions']} of {t['validity_checked']} "
                         "checked outputs have errors their source had not (not counted)")
        lines.append(f"  {t['elapsed_seconds']:.1f} s; per-object report: {self.report}")
        return "\n".join(lines)


def _table(fs, path: str, name: str, schema: pa.Schema | None = None) -> pa.Table | None:
    full = f"{path}/{name}.parquet"
    return read_table(fs, full, schema) if retry(fs.exists, full) else None


def _outputs(dest_fs, dest_path: str) -> set[str]:
    """Every object key under DEST except the index."""
    dest_fs.invalidate_cache(dest_path)
    if not retry(dest_fs.exists, dest_path):
        return set()
    keys = {p[len(dest_path.rstrip("/")) + 1:] for p in retry(dest_fs.find, dest_path)}
    return {k for k in keys if not k.startswith(f"{INDEX_FOLDER}/")}


def _index(dest_fs, dest_path: str, tables: str) -> tuple[dict[str, str], set[str]]:
    """This job's index rows as searchable text by key, and the keys other jobs' index files name."""
    folder = f"{dest_path}/{INDEX_FOLDER}"
    ours = index_path(dest_path, tables)
    files = sorted(retry(dest_fs.find, folder)) if retry(dest_fs.exists, folder) else []
    mine, others = {}, set()
    for file in files:
        rows = read_table(dest_fs, file).to_pylist()
        if file == ours or ours not in files:
            mine.update({r["key"]: "\0".join(str(v) for v in r.values() if v is not None) for r in rows})
        else:
            others.update(r["key"] for r in rows)
    return mine, others


def _source_of(job_source: str, source: str | None, storage_options: dict | None):
    """How to read an input again: from SOURCE given here (same layout), else where the run read it."""
    root = absolute(source) if source else job_source
    fs, path = filesystem(root, storage_options)
    try:
        reachable = retry(fs.exists, path)
    except OSError:
        reachable = False
    if not reachable:
        return lambda url: None
    if source is None:
        return lambda url: url
    return lambda url: root + url[len(job_source):] if url.startswith(job_source) else url


def _spread(keys: list[str], limit: int) -> set[str]:
    """At most `limit` keys taken evenly from the sorted list."""
    if limit <= 0 or not keys:
        return set()
    step = max(1, len(keys) // limit)
    return set(sorted(keys)[::step][:limit])


def _run_tasks(tasks: list[dict], client, objects: int) -> list[dict]:
    if client is None and objects <= PARALLEL_ABOVE:
        return [r for task in tasks for r in check_unit(task)]
    with cluster(client) as active:
        futures = active.map(check_unit, tasks, pure=False)
        return [r for part in active.gather(futures) for r in part]


def _inconsistent(results: list[dict]) -> dict[str, list[str]]:
    """Output study -> attributes whose values differ across its objects where their sources agreed."""
    studies: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["study"] is not None:
            studies[r["output_key"].split("/", 1)[0]].append(r)
    found = {}
    for study, members in studies.items():
        bad = []
        for attribute in members[0]["study"]:
            after = {m["study"][attribute] for m in members}
            before = {m["source_study"][attribute] for m in members}
            if len(after) > 1 and (None in before or len(before) == 1):
                bad.append(attribute)
        if bad:
            found[study] = bad
    return found


def verify(dest: str, tables: str, source: str | None = None, client=None,
           storage_options: dict | None = None, *, validity_limit: int = VALIDITY_LIMIT) -> Verification:
    """Check a finished run's DEST against its tables (and SOURCE when reachable); write the report."""
    started = time.perf_counter()
    dest, tables = absolute(dest), absolute(tables)
    fs, path = filesystem(tables, storage_options)
    if not retry(fs.exists, f"{path}/{JOB_NAME}") or not retry(fs.exists, f"{path}/{SUMMARY_NAME}"):
        raise JobError(f"no finished dicom-deid run in {tables} (run or finalize it first)")
    job = json.loads(retry(fs.cat_file, f"{path}/{JOB_NAME}"))
    manifest = _table(fs, path, "manifest", MANIFEST_SCHEMA).to_pylist()
    quarantine = _table(fs, path, "quarantine", QUARANTINE_SCHEMA).to_pylist()
    uid_rows = _table(fs, path, "uid_map", UID_MAP_SCHEMA).select(["original_uid", "new_uid", "attribute",
                                                                   "unit_id"]).to_pylist()
    planned = _table(fs, path, "plan") or _table(fs, path, "inventory")
    plan_rows = planned.select(["url", "sop_uid"]).to_pylist() if planned is not None else []
    dest_fs, dest_path = filesystem(dest, storage_options)
    outputs = _outputs(dest_fs, dest_path)
    index, other_jobs = _index(dest_fs, dest_path, tables)
    source_read = _source_of(job["source"], source, storage_options)

    problems: dict[str, set[str]] = defaultdict(set)  # url or output key -> completeness problems
    by_url: dict[str, list[dict]] = defaultdict(list)
    for row in manifest:
        by_url[row["source_url"]].append(row)
    planned_urls = {r["url"] for r in plan_rows}
    quarantined_urls = {q["source_url"] for q in quarantine}
    key_users = Counter(r["output_key"] for r in manifest if r["status"] == "written")
    for url in planned_urls:
        rows = by_url.get(url, [])
        if len(rows) != 1:
            problems[url].add("no-manifest-row" if not rows else "several-manifest-rows")
        for row in rows:
            if row["status"] == "written" and row["output_key"] not in outputs:
                problems[url].add("output-missing")
            if row["status"] == "written" and key_users[row["output_key"]] > 1:
                problems[url].add("output-key-shared")
            if row["status"] != "written" and url not in quarantined_urls:
                problems[url].add("no-quarantine-row")
    unaccounted = {url: {"manifest-row-not-planned"} for url in by_url if url not in planned_urls}
    unaccounted |= {url: {"quarantine-row-without-manifest-row"} for url in quarantined_urls - set(by_url)}
    written_keys = set(key_users)
    unaccounted |= {key: {"output-without-manifest-row"} for key in outputs - written_keys - other_jobs}
    unaccounted |= {key: {"index-row-without-output"} for key in set(index) - written_keys}

    written = [r for r in manifest if r["status"] == "written"]
    validity = _spread([r["output_key"] for r in written], validity_limit if dciodvfy_available() else 0)
    uids_by_unit: dict[str, list] = defaultdict(list)
    for u in uid_rows:
        uids_by_unit[u["unit_id"]].append((u["original_uid"], u["attribute"]))
    rows_by_unit: dict[str, list] = defaultdict(list)
    for r in written:
        rows_by_unit[r["unit_id"]].append({"source_url": r["source_url"], "source_read": source_read(r["source_url"]),
                                           "output_key": r["output_key"], "validity": r["output_key"] in validity})
    tasks = [{"profile": job["profile"], "dest": dest, "storage_options": storage_options, "rows": rows,
              "uids": uids_by_unit[unit], "index": {r["output_key"]: index.get(r["output_key"], "") for r in rows}}
             for unit, rows in sorted(rows_by_unit.items())]
    results = _run_tasks(tasks, client, len(written))

    originals = {u["original_uid"] for u in uid_rows}
    reverse = {u["new_uid"]: u["original_uid"] for u in uid_rows}
    sop_urls: dict[str, list[str]] = defaultdict(list)
    for r in plan_rows:
        if r["sop_uid"]:
            sop_urls[r["sop_uid"]].append(r["url"])
    status = {r["source_url"]: r["status"] for r in manifest}
    output_sops = {r["sop_uid"] for r in results if r["sop_uid"]}
    inconsistent = _inconsistent(results)
    totals = Counter()
    report = []
    for r in results:
        url = r["source_url"]
        if r.get("missing"):
            problems[url].add("output-missing")
        elif not r["readable"]:
            problems[url].add("unreadable")
        leaked = set(r["leak_attributes"])
        places = set(r["leak_places"])
        if originals.intersection(r["uid_tokens"]):  # a UID of another unit's objects
            leaked.add("uid:other-unit")
        dangling = quarantined_refs = 0
        for ref in r["references"]:
            if ref in output_sops:
                continue
            targets = sop_urls.get(reverse.get(ref, ref), [])
            if not targets:
                totals["references_external"] += 1
            elif any(status.get(t) == "written" for t in targets):
                dangling += 1
            else:
                quarantined_refs += 1
        totals["references_to_quarantined"] += quarantined_refs
        totals["dangling"] += dangling
        totals["source_checked"] += r["source_checked"]
        if r["validity_new_errors"] is not None:
            totals["validity_checked"] += 1
            totals["validity_regressions"] += r["validity_new_errors"] > 0
        report.append({"source_url": url, "output_key": r["output_key"], "status": "written",
                       "source_checked": r["source_checked"], "leaks": len(leaked),
                       "leak_attributes": ", ".join(sorted(leaked)), "leak_places": ", ".join(sorted(places)),
                       "profile_errors": ", ".join(r["profile_errors"]),
                       "inconsistent_attributes": ", ".join(inconsistent.get(r["output_key"].split("/")[0], [])),
                       "dangling_references": dangling, "references_to_quarantined": quarantined_refs,
                       "validity_new_errors": r["validity_new_errors"]})
        totals["leaks"] += bool(leaked)
        totals["profile_errors"] += bool(r["profile_errors"])
    checked = {r["source_url"] for r in report}
    for url in sorted(planned_urls - checked):
        rows = by_url.get(url, [])
        report.append({"source_url": url, "output_key": rows[0]["output_key"] if rows else None,
                       "status": rows[0]["status"] if rows else "missing", "source_checked": False})
    for name, what in sorted(unaccounted.items()):
        is_key = name in outputs or name in index
        report.append({"source_url": None if is_key else name, "output_key": name if is_key else None,
                       "status": "unaccounted", "source_checked": False, "completeness": ", ".join(sorted(what))})
    for row in report:
        if row["status"] != "unaccounted":
            row["completeness"] = ", ".join(sorted(problems.get(row["source_url"], ())))
    totals.update(objects=len(planned_urls), outputs=len(written), quarantined=len(manifest) - len(written),
                  lost=sum(1 for url in planned_urls if problems.get(url)), unaccounted=len(unaccounted),
                  inconsistencies=sum(len(v) for v in inconsistent.values()) + totals["dangling"])
    totals = {name: totals[name] for name in (
        "objects", "outputs", "quarantined", "source_checked", "leaks", "profile_errors", "lost", "unaccounted",
        "inconsistencies", "dangling", "references_external", "references_to_quarantined",
        "validity_checked", "validity_regressions")}
    totals["elapsed_seconds"] = round(time.perf_counter() - started, 3)
    report_path = f"{tables.rstrip('/')}/{REPORT_FOLDER}/report.parquet"
    write_table(fs, f"{path}/{REPORT_FOLDER}/report.parquet", pa.Table.from_pylist(report, schema=REPORT_SCHEMA))
    put_bytes(fs, f"{path}/{REPORT_FOLDER}/summary.json", json.dumps(totals, indent=2).encode())
    return Verification(totals, report_path)
