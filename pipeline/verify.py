"""`dicom-deid verify`: show from what a finished run left that nothing leaked and nothing was lost."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
from fsspec.core import split_protocol

from .audit import check_unit, dciodvfy_available
from .finalize import INDEX_FOLDER, SUMMARY_NAME, SUPERSEDED, index_path
from .job import JOB_NAME, JobError, absolute, cluster
from .runs import every_planned, listed, stored_runs
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
TOTALS = ("objects", "outputs", "quarantined", "source_checked", *FAILING, "dangling", "references_external",
          "references_to_quarantined", "validity_checked", "validity_regressions")


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


def _source_of(job_source: str, source: str | None,
               storage_options: dict | None) -> Callable[[str], str | None]:
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
    old = split_protocol(job_source)[1].rstrip("/") + "/"

    def moved(url: str) -> str:
        path = split_protocol(url)[1]
        return root.rstrip("/") + "/" + path[len(old):] if path.startswith(old) else url
    return moved


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


def _study(result: dict) -> str:
    """The output's new Study Instance UID, the first segment of its key."""
    return result["output_key"].split("/", 1)[0]


def _inconsistent(results: list[dict]) -> dict[str, list[str]]:
    """Output study -> attributes whose values differ across its objects where their sources agreed."""
    studies: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["study"] is not None:
            studies[_study(r)].append(r)
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


@dataclass
class _Run:
    """What a finished job left: its tables, DEST's keys and index."""

    job: dict
    manifest: list[dict]  # superseded rows included: their outputs stay in DEST
    quarantine: list[dict]
    uids: list[dict]
    planned: list[dict]  # every object any run planned, as its last run planned it
    outputs: set[str]
    index: dict[str, str]
    other_jobs: set[str]
    listed: set[str] = field(default_factory=set)  # the urls of the last run's listing of SOURCE

    @property
    def current(self) -> list[dict]:
        """The manifest rows that stand: each object's row from the last run that processed it."""
        return [r for r in self.manifest if r["status"] != SUPERSEDED]


def _load(dest: str, tables: str, storage_options: dict | None) -> _Run:
    fs, path = filesystem(tables, storage_options)
    if not retry(fs.exists, f"{path}/{JOB_NAME}") or not retry(fs.exists, f"{path}/{SUMMARY_NAME}"):
        raise JobError(f"no finished dicom-deid run in {tables} (run or finalize it first)")
    runs = stored_runs(fs, path)
    latest = {r["url"]: r for r in every_planned(fs, path, runs, ["url", "sop_uid"]).to_pylist()}
    dest_fs, dest_path = filesystem(dest, storage_options)
    index, other_jobs = _index(dest_fs, dest_path, tables)
    return _Run(json.loads(retry(fs.cat_file, f"{path}/{JOB_NAME}")),
                _table(fs, path, "manifest", MANIFEST_SCHEMA).to_pylist(),
                _table(fs, path, "quarantine", QUARANTINE_SCHEMA).to_pylist(),
                _table(fs, path, "uid_map", UID_MAP_SCHEMA).select(
                    ["original_uid", "new_uid"]).to_pylist(),
                list(latest.values()), _outputs(dest_fs, dest_path), index, other_jobs,
                set(listed(fs, path, runs[-1])["url"].to_pylist()) if runs else set())


def _completeness(run: _Run) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Inputs (listed now or planned by any run) that are not exactly one output or one quarantine row;
    outputs and rows of no input. An object processed again keeps its earlier rows as `superseded`: they
    count for nothing but the outputs they name, which stay in DEST."""
    lost: dict[str, set[str]] = defaultdict(set)
    by_url: dict[str, list[dict]] = defaultdict(list)
    for row in run.current:
        by_url[row["source_url"]].append(row)
    planned = {r["url"] for r in run.planned}
    quarantined = {q["source_url"] for q in run.quarantine}
    key_users = Counter(key for _, key in {(r["source_url"], r["output_key"]) for r in run.manifest
                                            if r["status"] == "written"})  # inputs written to each key
    for url in planned | run.listed:
        rows = by_url.get(url, [])
        if len(rows) != 1:
            lost[url].add("no-manifest-row" if not rows else "several-manifest-rows")
        for row in rows:
            if row["status"] == "written" and row["output_key"] not in run.outputs:
                lost[url].add("output-missing")
            if row["status"] == "written" and key_users[row["output_key"]] > 1:
                lost[url].add("output-key-shared")
            if row["status"] != "written" and url not in quarantined:
                lost[url].add("no-quarantine-row")
    unaccounted = {url: {"manifest-row-not-planned"} for url in {r["source_url"] for r in run.manifest}
                   if url not in planned}
    unaccounted |= {url: {"quarantine-row-without-manifest-row"} for url in quarantined - set(by_url)}
    keys = set(key_users)
    earlier = {r["output_key"] for r in run.manifest if r["status"] == SUPERSEDED and r["output_key"]}
    unaccounted |= {key: {"output-without-manifest-row"}
                    for key in run.outputs - keys - earlier - run.other_jobs}
    unaccounted |= {key: {"index-row-without-output"} for key in set(run.index) - keys}
    return lost, unaccounted


def _tasks(run: _Run, dest: str, tables: str, source_read: Callable[[str], str | None],
           storage_options: dict | None, validity_limit: int) -> list[dict]:
    """One task per unit: its outputs, where to re-read their sources, its index rows."""
    written = [r for r in run.current if r["status"] == "written"]
    validity = _spread([r["output_key"] for r in written], validity_limit if dciodvfy_available() else 0)
    rows: dict[str, list] = defaultdict(list)
    for r in written:
        rows[r["unit_id"]].append({"source_url": r["source_url"], "source_read": source_read(r["source_url"]),
                                   "output_key": r["output_key"], "validity": r["output_key"] in validity})
    return [{"profile": run.job["profile"], "dest": dest, "tables": tables, "unit_id": unit,
             "storage_options": storage_options, "rows": members,
             "index": {r["output_key"]: run.index.get(r["output_key"], "") for r in members}}
            for unit, members in sorted(rows.items())]


class _References:
    """Resolves an output's references: to an output, to an input never in SOURCE, or dangling."""

    def __init__(self, run: _Run, results: list[dict]) -> None:
        self.outputs = {r["sop_uid"] for r in results if r["sop_uid"]}
        self.reverse = {u["new_uid"]: u["original_uid"] for u in run.uids}
        self.inputs: dict[str, list[str]] = defaultdict(list)
        for r in run.planned:
            if r["sop_uid"]:
                self.inputs[r["sop_uid"]].append(r["url"])
        self.status = {r["source_url"]: r["status"] for r in run.current}

    def count(self, references: list[str]) -> Counter:
        kinds: Counter = Counter()
        for ref in references:
            if ref not in self.outputs:
                targets = self.inputs.get(self.reverse.get(ref, ref), [])
                if not targets:
                    kinds["references_external"] += 1
                elif any(self.status.get(t) == "written" for t in targets):
                    kinds["dangling"] += 1
                else:
                    kinds["references_to_quarantined"] += 1
        return kinds


def _object_rows(run: _Run, results: list[dict], lost: dict[str, set[str]], totals: Counter) -> list[dict]:
    """One report row per checked output, counting into `totals`."""
    originals = {u["original_uid"] for u in run.uids}
    references = _References(run, results)
    inconsistent = _inconsistent(results)
    rows = []
    for r in results:
        if r.get("missing"):
            lost[r["source_url"]].add("output-missing")
        elif not r["readable"]:
            lost[r["source_url"]].add("unreadable")
        leaked = set(r["leak_attributes"])
        if originals.intersection(r["uid_tokens"]):  # a UID of another unit's objects
            leaked.add("uid:other-unit")
        kinds = references.count(r["references"])
        totals.update(kinds)
        totals.update(source_checked=r["source_checked"], leaks=bool(leaked),
                      profile_errors=bool(r["profile_errors"]),
                      validity_checked=r["validity_new_errors"] is not None,
                      validity_regressions=bool(r["validity_new_errors"]))
        rows.append({"source_url": r["source_url"], "output_key": r["output_key"], "status": "written",
                     "source_checked": r["source_checked"], "leaks": len(leaked),
                     "leak_attributes": ", ".join(sorted(leaked)), "leak_places": ", ".join(r["leak_places"]),
                     "profile_errors": ", ".join(r["profile_errors"]),
                     "inconsistent_attributes": ", ".join(inconsistent.get(_study(r), [])),
                     "dangling_references": kinds["dangling"],
                     "references_to_quarantined": kinds["references_to_quarantined"],
                     "validity_new_errors": r["validity_new_errors"]})
    totals["inconsistencies"] += sum(len(v) for v in inconsistent.values()) + totals["dangling"]
    return rows


def _other_rows(run: _Run, checked: set[str], unaccounted: dict[str, set[str]]) -> list[dict]:
    """Report rows of inputs with no output to check, and of outputs or table rows that no input explains."""
    first = {}
    for row in run.current:
        first.setdefault(row["source_url"], row)
    rows = [{"source_url": url, "output_key": first[url]["output_key"] if url in first else None,
             "status": first[url]["status"] if url in first else "missing", "source_checked": False}
            for url in sorted(({r["url"] for r in run.planned} | run.listed) - checked)]
    for name, what in sorted(unaccounted.items()):
        is_key = name in run.outputs or name in run.index
        rows.append({"source_url": None if is_key else name, "output_key": name if is_key else None,
                     "status": "unaccounted", "source_checked": False,
                     "completeness": ", ".join(sorted(what))})
    return rows


def verify(dest: str, tables: str, source: str | None = None, client=None,
           storage_options: dict | None = None, *, validity_limit: int = VALIDITY_LIMIT) -> Verification:
    """Check a finished run's DEST against its tables (and SOURCE when reachable); write the report.

    SOURCE, when given, replaces the run's source location (same layout below it); otherwise the inputs
    are re-read where the run read them, when reachable. dciodvfy runs on at most `validity_limit` outputs.
    """
    started = time.perf_counter()
    dest, tables = absolute(dest), absolute(tables)
    run = _load(dest, tables, storage_options)
    lost, unaccounted = _completeness(run)
    tasks = _tasks(run, dest, tables, _source_of(run.job["source"], source, storage_options), storage_options,
                   validity_limit)
    results = _run_tasks(tasks, client, sum(len(t["rows"]) for t in tasks))
    totals: Counter = Counter()
    report = _object_rows(run, results, lost, totals)
    report += _other_rows(run, {r["source_url"] for r in report}, unaccounted)
    for row in report:
        if row["status"] != "unaccounted":
            row["completeness"] = ", ".join(sorted(lost.get(row["source_url"], ())))
    inputs = {r["url"] for r in run.planned} | run.listed
    written = sum(r["status"] == "written" for r in run.current)
    totals.update(objects=len(inputs), outputs=written, quarantined=len(run.current) - written,
                  lost=sum(1 for url in inputs if lost.get(url)), unaccounted=len(unaccounted))
    figures = {name: totals[name] for name in TOTALS}
    figures["elapsed_seconds"] = round(time.perf_counter() - started, 3)
    fs, path = filesystem(tables, storage_options)
    write_table(fs, f"{path}/{REPORT_FOLDER}/report.parquet",
                pa.Table.from_pylist(report, schema=REPORT_SCHEMA))
    put_bytes(fs, f"{path}/{REPORT_FOLDER}/summary.json", json.dumps(figures, indent=2).encode())
    return Verification(figures, f"{tables.rstrip('/')}/{REPORT_FOLDER}/report.parquet")
