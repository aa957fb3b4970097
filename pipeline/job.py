"""The whole job: list, scan, plan, run units and finalize, resumable from what TABLES already holds."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from .console import UnitMeter, stage
from .deid import Profile
from .deid.keys import SECRET_ENV, as_key
from .deid.profile import resolve
from .listing import LISTING_FILE_SUFFIXES
from .report import load_table, result_html, result_text
from .secret import SECRET_FILE_ENV, fingerprint, from_environment
from .storage import filesystem, is_local, retry
from .tables import put_bytes

if TYPE_CHECKING:
    import pandas as pd

    from .ingest import Work

log = logging.getLogger(__name__)

JOB_NAME = "job.json"
UNITS_PER_THREAD = 8  # enough units that no worker idles while another finishes a long one
MIN_UNIT_OBJECTS = 10  # below this, per-unit overhead (parts, marker, task) dominates
MIN_UNIT_BYTES = 2**20
LOCAL_DASHBOARD = "127.0.0.1:0"  # the embedded cluster's dashboard: this machine only, unless asked
# Job settings beyond the profile, with their defaults (the crosswalk is recorded as used or not).
PATIENT_SETTINGS = {"pseudonymize_patients": False, "crosswalk": False, "allow_burned_in": False,
                    "burned_in_unknown": "quarantine"}
SHARD_THREADS = 4  # shards size units as if each had this many threads: alike on every shard's machine
# A local SOURCE of at most this many objects runs in this process, without Dask: starting worker processes
# (2-3 s) costs more than a second core saves on ~1,000 objects at ~2 ms each.
IN_PROCESS_OBJECTS = 1000
# An embedded cluster's event loops wake far less often than Dask's defaults (a tick every 20 ms, system and
# memory monitors 2 and 10 times a second): each wake-up takes the GIL from de-identification, and they
# cost a one-worker job ~2 s of CPU in 15. The profiler samples pydicom's deep stacks: ~12% of throughput.
QUIET_LOOPS = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "2s",
               "distributed.worker.memory.monitor-interval": "500ms",
               "distributed.worker.profile.enabled": False}


class JobError(Exception):
    """A problem with how the job was asked for (not with any object): reported in one line."""


@dataclass(frozen=True)
class RunResult:
    """What a run did and where it went; `ok` is False when units failed or too much was quarantined."""

    source: str
    dest: str
    tables: str
    objects: int = 0
    written: int = 0
    quarantined: int = 0
    source_bytes: int = 0
    output_bytes: int = 0
    units_total: int = 0
    units_run: int = 0
    units_skipped: int = 0
    failed_units: tuple[str, ...] = ()
    elapsed: float = 0.0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    max_error_rate: float | None = None
    report: str = ""
    verified: bool | None = None  # None: not verified
    run_objects: int = 0  # processed by this run (the counts above cover every run into TABLES)
    run_bytes: int = 0
    storage_options: dict | None = field(default=None, repr=False, compare=False)  # may hold credentials

    def __str__(self) -> str:
        return result_text(self)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return result_html(self)

    def manifest(self) -> pd.DataFrame:
        """One row per source object and run that processed it: written (with its output key), quarantined
        (with the reason), or `superseded` (it changed, and a later run processed it again)."""
        return load_table(self, "manifest")

    def quarantine(self) -> pd.DataFrame:
        """The quarantined objects, with reason and detail."""
        return load_table(self, "quarantine")

    def uid_map(self) -> pd.DataFrame:
        """Original UID to new UID (private: it links outputs back to the source)."""
        return load_table(self, "uid_map")

    def index(self) -> pd.DataFrame:
        """This job's index of DEST: new UIDs, modality, SOP class, size and key of each output."""
        return load_table(self, "index")

    def actions(self, run: int | None = None) -> pd.DataFrame:
        """What happened to each attribute (attribute, tag, action, source, count) in the objects written
        by one run, or by every run with a `run` column (private, like the other tables)."""
        return load_table(self, "actions", run=run)

    @property
    def error_rate(self) -> float:
        return self.quarantined / self.objects if self.objects else 0.0

    @property
    def ok(self) -> bool:
        too_many = self.max_error_rate is not None and self.error_rate > self.max_error_rate
        return not self.failed_units and not too_many and self.verified is not False


def resolve_key(secret: str | bytes | None) -> bytes:
    """The secret from the argument or the environment; workers must share it, so never a random one."""
    key = as_key(secret) if secret else from_environment()
    if not key:
        raise JobError(f"no de-identification secret: pass secret= (CLI: --secret-file) or set {SECRET_ENV} "
                       f"or {SECRET_FILE_ENV}")
    return key


def _inside(inner: str, outer: str, storage_options: dict | None) -> bool:
    inner_fs, inner_path = filesystem(inner, storage_options)
    outer_fs, outer_path = filesystem(outer, storage_options)
    inner_path, outer_path = inner_path.rstrip("/"), outer_path.rstrip("/")
    return type(inner_fs) is type(outer_fs) and (inner_path == outer_path
                                                 or inner_path.startswith(outer_path + "/"))


def absolute(url: str) -> str:
    """Local paths made absolute here, since workers may run in another working directory."""
    return os.path.abspath(url) if "://" not in url else url


def check_locations(source: str, dest: str, tables: str, storage_options: dict | None) -> None:
    """Refuse a missing source, and layouts that would leak linkage tables into DEST or feed outputs back."""
    fs, path = filesystem(source, storage_options)
    if not retry(fs.exists, path):
        raise FileNotFoundError(f"no objects at {source}")
    if _inside(tables, dest, storage_options):
        raise JobError("the tables location must not be inside DEST: it links outputs back to patients")
    if _inside(dest, tables, storage_options):
        raise JobError("DEST must not be inside the tables location")
    if _inside(dest, source, storage_options):
        raise JobError("DEST must not be inside SOURCE: outputs would be read back as inputs")


def local_cluster(n_workers: int | None = None, key: bytes | None = None,
                  dashboard_address: str = LOCAL_DASHBOARD):
    """A LocalCluster of one single-threaded worker process per core (de-identification holds the GIL);
    its workers get the secret in their environment, never in a task."""
    import dask
    from distributed import LocalCluster

    n_workers = n_workers or os.cpu_count() or 1
    # The preload makes worker processes leave Ctrl-C to this process (see console.dask_setup).
    with stage(f"starting a local Dask cluster of {n_workers} workers"), \
            dask.config.set({**QUIET_LOOPS, "distributed.worker.preload": ["pipeline.console"]}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=dashboard_address, silence_logs=logging.ERROR,
                            host="127.0.0.1", env=_secret_env(key))


def small_local_source(source: str, limit: int = IN_PROCESS_OBJECTS) -> bool:
    """True when SOURCE is a local folder (or file) of at most `limit` files, counted without listing more."""
    if not is_local(source):
        return False
    path = filesystem(source)[1]
    if os.path.isfile(path):
        return not path.lower().endswith(("manifest.json", *LISTING_FILE_SUFFIXES))
    seen = 0
    for _, _, names in os.walk(path, followlinks=True):
        seen += len(names)
        if seen > limit:
            return False
    return True


def _secret_env(key: bytes | None) -> dict[str, str]:
    if key is None:
        return {}
    if b"\0" in key:
        raise JobError("the secret holds a NUL byte, which no environment variable can carry")
    return {SECRET_ENV: os.fsdecode(key)}  # the worker's os.fsencode gives back these bytes


def _current_client():
    """The Dask client this process made current, if any (none before Dask is loaded, which costs seconds)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


@contextmanager
def cluster(client=None, key: bytes | None = None, dashboard_address: str = LOCAL_DASHBOARD,
            workers: int | None = None) -> Iterator:
    """The given client, else the current one, else an embedded LocalCluster of `workers` processes (one
    per core by default) closed afterwards."""
    if client is not None:
        yield client
        return
    from distributed import Client

    current = _current_client()
    if current is not None:
        yield current
        return
    with local_cluster(workers, key=key, dashboard_address=dashboard_address) as local:
        try:
            with Client(local) as embedded:
                yield embedded
        finally:
            with stage("stopping the local Dask cluster"):  # seconds, while workers wind down
                local.close()


@contextmanager
def _sent_secret(client, key: bytes | None, send: bool) -> Iterator[None]:
    """With --send-secret, the secret goes to the workers in a plugin, over TLS only, removed afterwards."""
    if not send or key is None:
        yield
        return
    from .sendsecret import SendSecret

    address = client.scheduler.address
    if not address.startswith("tls://"):
        raise JobError(f"--send-secret needs a tls:// scheduler, not {address.split('://')[0]}://: the "
                       f"secret would cross the network in the clear; give workers {SECRET_ENV} instead")
    plugin = SendSecret(key)
    client.register_plugin(plugin, name=plugin.name)
    try:
        yield
    finally:
        client.unregister_worker_plugin(plugin.name)


def unit_size(total: int, limit: int, threads: int, smallest: int = MIN_UNIT_OBJECTS) -> int:
    """A unit's share of `total` (objects or bytes): several units per worker thread, never above `limit`."""
    spread = math.ceil(total / (UNITS_PER_THREAD * max(threads, 1)))
    return min(limit, max(smallest, spread))


def prepare(source: str, tables: str, client, storage_options: dict | None, *, max_unit_objects: int,
            max_unit_bytes: int, before_write: Callable[[], None] | None = lambda: None,
            threads: int | None = None, rules: list | None = None, progress: bool = False) -> Work:
    """Stages 1-3: list SOURCE (keeping what `rules` select), then scan and plan only what is new or changed
    since the last run.

    Units are sized for `threads` worker threads (default: the client's), so shards, whose clusters may
    differ, pass a number of their own that every shard computes alike. `before_write` is called before
    the new run is stored; None stores nothing (a dry run). `progress` shows a meter of headers read."""
    from .ingest import prepare as ingest

    threads = threads or sum(client.nthreads().values())
    return ingest(source, tables, client, storage_options, before_write=before_write,
                  unit_objects=lambda n: unit_size(n, max_unit_objects, threads),
                  unit_bytes=lambda b: unit_size(b, max_unit_bytes, threads, MIN_UNIT_BYTES),
                  rules=rules, progress=progress)


def _claim(tables: str, identity: dict, storage_options: dict | None) -> Callable[[], None]:
    """Refuse to resume a different job in TABLES; return what records this job there, called only just
    before the job first writes (a run that fails earlier leaves TABLES as it was)."""
    fs, path = filesystem(tables, storage_options)
    job_path = f"{path}/{JOB_NAME}"
    if retry(fs.exists, job_path):
        recorded = json.loads(retry(fs.cat_file, job_path))
        if recorded != identity:
            differ = ", ".join(differences(recorded, identity))
            raise JobError(f"the tables location holds a different job ({differ} differ); run with the same "
                           "settings to resume it, or use a new --tables location")
        return lambda: None

    def record() -> None:
        retry(fs.makedirs, path, exist_ok=True)
        put_bytes(fs, job_path, json.dumps(identity, indent=2, sort_keys=True).encode())
    return record


def differences(recorded: dict, asked: dict) -> list[str]:
    """The settings, by flag name, in which two job identities differ; the secret only as a name."""
    found = []
    for name in sorted(set(recorded) | set(asked)):
        was, now = recorded.get(name), asked.get(name)
        if was == now:
            continue
        if name == "profile":
            found += ["--" + f.replace("_", "-") for f in sorted(set(was or {}) | set(now or {}))
                      if (was or {}).get(f) != (now or {}).get(f)]
        elif name == "secret_fingerprint":
            found.append("secret")
        elif name == "filters":
            found.append("--include/--exclude")
        elif name in PATIENT_SETTINGS:
            found.append(_flag(name))
        else:
            found.append(f"{name.upper()} (was {was}, now {now})")
    return found


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _patient_settings(pseudonymize_patients: bool, crosswalk: str | None, allow_burned_in: bool,
                      burned_in_unknown: str) -> dict:
    """The patient and burned-in settings that differ from their defaults, as the job records them (jobs
    recorded before these settings existed resume with the defaults)."""
    from .burned_in import UNKNOWN_CHOICES

    if burned_in_unknown not in UNKNOWN_CHOICES:
        raise JobError(f"burned_in_unknown must be one of {', '.join(UNKNOWN_CHOICES)}, "
                       f"not {burned_in_unknown!r}")
    asked = {"pseudonymize_patients": pseudonymize_patients or bool(crosswalk), "crosswalk": bool(crosswalk),
             "allow_burned_in": allow_burned_in, "burned_in_unknown": burned_in_unknown}
    return {name: value for name, value in asked.items() if value != PATIENT_SETTINGS[name]}


def _remaining(planned: pa.Table, done: set[str]) -> pa.Table:
    """The plan's rows whose unit is not committed yet."""
    committed = pc.is_in(planned["unit_id"], value_set=pa.array(sorted(done), pa.string()))
    return planned.filter(pc.invert(committed))


def changes_line(counts: dict) -> str:
    """The listing against the previous run's, in one line."""
    return (f"SOURCE since the last run: {counts['new']} new, {counts['changed']} changed, "
            f"{counts['unchanged']} unchanged, {counts['gone']} gone")


def _dry_run(source: str, dest: str, tables: str, work: Work, done: set[str]) -> RunResult:
    from .dryrun import describe_plan

    planned = work.pending
    units = pc.unique(planned["unit_id"])
    todo = _remaining(planned, done)
    listed = sum(work.counts[k] for k in ("new", "changed", "unchanged"))
    report = describe_plan(planned, todo, changes_line(work.counts))
    return RunResult(source, dest, tables, objects=listed, units_total=len(units),
                     units_skipped=len(units) - len(pc.unique(todo["unit_id"])), dry_run=True,
                     report=report)


def _crosswalk(url: str, storage_options: dict | None) -> dict[str, tuple[str, str]]:
    """The crosswalk, read here in the driver; a unit gets only its own patients' rows."""
    from .patients import CrosswalkError, read_crosswalk

    try:
        return read_crosswalk(absolute(url), storage_options)
    except CrosswalkError as exc:
        raise JobError(f"--crosswalk: {exc}") from None


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` with 0 <= I < N: shard I of N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise JobError(f"--shard takes I/N (0-based I), not {text!r}") from None
    if not 0 <= index < count:
        raise JobError(f"--shard {text}: I must be between 0 and N-1")
    return index, count


def source_still_there(source: str, storage_options: dict | None) -> None:
    """Stop, before anything is committed in its name, when SOURCE itself went away during the run."""
    fs, path = filesystem(source, storage_options)
    fs.invalidate_cache()
    if not retry(fs.exists, path):
        raise JobError(f"SOURCE {source} vanished during the run; run again once it is back")


def _uncommit(tables: str, units: list[str], storage_options: dict | None) -> None:
    """Remove the commit markers of units that ran while SOURCE was gone: they run again next time."""
    from .execute import marker_path

    fs, path = filesystem(tables, storage_options)
    for unit in units:
        retry(fs.rm, marker_path(path, unit))


def _shard_done(tables: str, shard: tuple[int, int], outcome, elapsed: float,
                storage_options: dict | None) -> str:
    """Record what this shard did, for finalize; the report a person reads."""
    from .runs import SHARDS_FOLDER

    fs, path = filesystem(tables, storage_options)
    facts = {"shard": shard[0], "of": shard[1], "elapsed": elapsed, "failed_units": outcome.failed_units,
             **{k: getattr(outcome, k) for k in ("units_total", "units_run", "units_skipped", "objects",
                                                 "source_bytes")}}
    put_bytes(fs, f"{path}/{SHARDS_FOLDER}/{shard[0]}-of-{shard[1]}.json", json.dumps(facts).encode())
    return (f"shard {shard[0]}/{shard[1]}: {outcome.units_run} units run ({outcome.objects} objects), "
            f"{outcome.units_skipped} already committed, {len(outcome.failed_units)} failed\n"
            f"when every shard is done: dicom-deid finalize --tables {tables}")


def run(source: str, dest: str, tables: str, profile: Profile | None = None, client=None,
        secret: str | bytes | None = None, storage_options: dict | None = None, dry_run: bool = False,
        max_error_rate: float | None = None, progress: bool = False, *, max_unit_objects: int = 1000,
        max_unit_bytes: int = 2**31, on_unit: Callable[[dict], None] | None = None, send_secret: bool = False,
        dashboard_address: str = LOCAL_DASHBOARD, shard: tuple[int, int] | None = None,
        verify: bool = False, rules: list[tuple[str, str]] | None = None, pseudonymize_patients: bool = False,
        crosswalk: str | None = None, allow_burned_in: bool = False, burned_in_unknown: str = "quarantine",
        workers: int | None = None, **profile_flags: bool) -> RunResult:
    """De-identify every DICOM object under `source` into `dest`, with linkage tables in `tables`; objects
    an earlier run processed, unchanged since, are skipped unread. With `shard=(i, n)`, run only shard i's
    units and leave finalizing to `finalize_job` once every shard is done.
    `verify` checks the finished run as `dicom-deid verify` does; `ok` is then False on any finding.
    `rules` are ("include" | "exclude", glob) pairs on paths relative to `source`, later ones winning.
    `pseudonymize_patients` gives Patient ID and Name keyed research IDs, `crosswalk` (CSV or Parquet:
    patient_id, research_id[, research_name]; implies pseudonyms) gives them where it has a row.
    Objects marked Burned In Annotation YES are quarantined unless `allow_burned_in`; objects of classes
    known to show burned-in text, without the attribute, follow `burned_in_unknown` ("quarantine",
    "allow"). `workers` sizes the embedded cluster; given, a small local job gets one too.
    """
    from .execute import Settings, committed_units, run_units
    from .finalize import FINALIZING, describe, finalize, read_summary
    from .here import run_here
    from .ingest import shard_of
    from .patients import with_crosswalk
    from .workers import check_workers

    started = time.perf_counter()
    try:
        profile = resolve(profile, profile_flags)
    except TypeError as exc:
        raise JobError(str(exc)) from exc
    if max_error_rate is not None and not 0 <= max_error_rate <= 1:
        raise JobError("max_error_rate must be between 0 and 1")
    if verify and shard:
        raise JobError("a shard holds only part of the job: run `dicom-deid verify` after `finalize`")
    patients = _patient_settings(pseudonymize_patients, crosswalk, allow_burned_in, burned_in_unknown)
    source, dest, tables = absolute(source), absolute(dest), absolute(tables)
    check_locations(source, dest, tables, storage_options)
    research_ids = _crosswalk(crosswalk, storage_options) if crosswalk else None
    key = None if dry_run else resolve_key(secret)
    # A small local job lists, scans and plans in this process and runs its units here too, without Dask.
    small = (client is None and workers is None and not shard and not send_secret
             and _current_client() is None and small_local_source(source))
    with (nullcontext() if small else cluster(client, key, dashboard_address, workers)) as active, \
            _sent_secret(active, key, send_secret):
        if active is not None:
            log.info("Dask dashboard: %s", active.dashboard_link)
        identity = {"source": source, "dest": dest, "profile": asdict(profile),
                    "secret_fingerprint": None if dry_run else fingerprint(key)}
        if rules:  # only then, so jobs recorded before filters existed still resume
            identity["filters"] = [list(rule) for rule in rules]
        identity.update(patients)
        record = None if dry_run else _claim(tables, identity, storage_options)
        if active is not None:
            with stage("checking that every worker holds the job's secret"):
                check_workers(active, key and fingerprint(key))
        work = prepare(source, tables, active, storage_options, max_unit_objects=max_unit_objects,
                       max_unit_bytes=max_unit_bytes, before_write=record,
                       threads=SHARD_THREADS * shard[1] if shard else 1 if small else None, rules=rules,
                       progress=progress)
        done = committed_units(tables, storage_options)
        if dry_run:
            return _dry_run(source, dest, tables, work, done)
        planned = work.pending
        if shard:
            units = pc.unique(planned["unit_id"]).to_pylist()
            mine = pa.array([unit for unit in units if shard_of(unit, shard[1]) == shard[0]], pa.string())
            planned = planned.filter(pc.is_in(planned["unit_id"], value_set=mine))
        if research_ids is not None:
            planned = with_crosswalk(planned, research_ids)
        chosen = {**PATIENT_SETTINGS, **patients}
        settings = Settings(dest, tables, profile, fingerprint(key), storage_options,
                            pseudonymize_patients=chosen["pseudonymize_patients"],
                            allow_burned_in=chosen["allow_burned_in"],
                            burned_in_unknown=chosen["burned_in_unknown"])
        todo = _remaining(planned, done)
        show = progress and todo.num_rows
        bars = UnitMeter(todo.num_rows, pc.sum(todo["size"]).as_py() or 0) if show else None
        unread: list[str] = []  # units of this run that could not read some object
        callbacks = [c for c in (bars, on_unit) if c]

        def unit_finished(stats: dict) -> None:
            if "read-error" in stats["reasons"]:
                unread.append(stats["unit_id"])
            for callback in callbacks:
                callback(stats)

        try:
            if small:
                outcome = run_here(planned, settings, key, done=done, on_unit=unit_finished)
            else:
                outcome = run_units(active, planned, settings, done=done, on_unit=unit_finished,
                                    on_partial=bars.partial if bars else None)
        finally:
            if bars:
                bars.close()
    if unread:
        try:
            source_still_there(source, storage_options)
        except JobError:
            _uncommit(tables, unread, storage_options)  # so that the next run reads them again
            raise
    record()
    if shard:
        report = _shard_done(tables, shard, outcome, time.perf_counter() - started, storage_options)
        return RunResult(source, dest, tables, objects=outcome.objects, written=outcome.written,
                         quarantined=outcome.quarantined, source_bytes=outcome.source_bytes,
                         output_bytes=outcome.output_bytes, units_total=outcome.units_total,
                         units_run=outcome.units_run, units_skipped=outcome.units_skipped,
                         failed_units=tuple(outcome.failed_units), elapsed=time.perf_counter() - started,
                         quarantine_reasons=dict(outcome.reasons), max_error_rate=max_error_rate,
                         report=f"{changes_line(work.counts)}\n{report}", run_objects=outcome.objects,
                         run_bytes=outcome.source_bytes, storage_options=storage_options)
    summary = read_summary(tables, storage_options)
    settled = summary and all(run.closed for run in work.runs) and not outcome.units_run
    fresh = bool(work.created or outcome.failed_units or not settled)
    report = ("nothing new: every unit was committed by an earlier run, so this run processed no object.\n"
              "totals of the job so far:\n")
    if fresh:
        report = ""
        run_facts = {"source": source, "elapsed": time.perf_counter() - started,
                     **{k: getattr(outcome, k) for k in ("units_run", "failed_units", "objects",
                                                         "source_bytes")}}
        with stage(FINALIZING):
            summary = finalize(tables, dest, storage_options, run=run_facts, progress=progress)
    result = RunResult(
        source, dest, tables, objects=summary["objects"], written=summary["written"],
        quarantined=summary["quarantined"], source_bytes=summary["source_bytes"],
        output_bytes=summary["output_bytes"], units_total=summary["units_total"], units_run=outcome.units_run,
        units_skipped=summary["units_total"] - outcome.units_run - len(outcome.failed_units),
        failed_units=tuple(outcome.failed_units), elapsed=time.perf_counter() - started,
        quarantine_reasons=summary["quarantine_reasons"], max_error_rate=max_error_rate,
        report=f"{changes_line(work.counts)}\n{report}{describe(summary, this_run=fresh)}",
        run_objects=outcome.objects, run_bytes=outcome.source_bytes, storage_options=storage_options)
    if not verify:
        return result
    from .verify import verify as check

    with stage("verifying the run"):
        verification = check(dest, tables, client=client, storage_options=storage_options)
    return replace(result, verified=verification.ok, report=f"{result.report}\n{verification.describe()}")
