"""A rerun over a large archive: 1 million objects already processed, then none or 10,000 new ones.

Usage (from the repository root): python -m benchmarks.ingest_scale [--objects 1000000] [--new 10000]
What is measured is everything a run does before its units start, except the store's own work: the listing
(a table the store hands over) and the header scan of the new objects (synthetic rows for them) stand in
for requests. The baseline, measured alongside, is sorting the listing by url. Each measurement runs in a
fresh process; peak memory is what the step added above the listing already in memory (Linux: the peak
is reset before the step).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.plan_scale import in_fresh_process, synthetic_inventory
from pipeline import ingest
from pipeline.plan import plan
from pipeline.runs import Changes, close_run, write_run
from pipeline.storage import filesystem


def _listing(inventory: pa.Table) -> pa.Table:
    versions = pc.binary_join_element_wise('"', pc.cast(inventory["size"], pa.string()), '"', "")
    return pa.table({"url": inventory["url"], "size": inventory["size"], "version": versions}).sort_by("url")


def _first_run(tables: str, objects: int, studies: int) -> None:
    """TABLES as a finished first run over `objects` objects leaves it."""
    inventory = synthetic_inventory(objects, studies)
    listing = _listing(inventory)
    planned = plan(inventory).join(listing.select(["url", "version"]), keys="url")
    planned = planned.append_column("change", pa.array(["new"] * planned.num_rows))
    fs, path = filesystem(tables)
    empty = listing.schema.empty_table()
    todo = listing.append_column("change", pa.array(["new"] * objects))
    write_run(fs, path, 1, planned, Changes(listing, todo, empty, {"new": objects, "changed": 0, "gone": 0,
                                                                   "unchanged": 0}))
    close_run(fs, path, 1)
    pq.write_table(listing, f"{tables}/../listing.parquet")


def _new_objects(new: int, seed: int) -> pa.Table:
    """`new` objects of 1,000 studies none of which was seen before."""
    table = synthetic_inventory(new, max(1, new // 10), seed=seed)
    return table.set_column(0, "url", pc.binary_join_element_wise(table["url"], ".new", ""))


def _memory(field: str) -> int:
    """VmRSS or VmHWM (the peak since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # Linux: the peak restarts from the current resident size


def _measure(original: str, step: str, new: int, results) -> None:
    tables = f"{original}-{step}"  # a fresh copy of the first run's TABLES: every repeat starts alike
    shutil.rmtree(tables, ignore_errors=True)
    shutil.copytree(original, tables)
    listing = pq.read_table(f"{original}/../listing.parquet")
    added = _new_objects(new, seed=1) if step == "new" else None
    if added is not None:
        listing = pa.concat_tables([listing, _listing(added)]).sort_by("url")
    ingest.list_objects = lambda *args, **kw: listing
    ingest.source_still_there = lambda *args: None
    ingest.scan = lambda todo, *args, **kw: added.take(pc.index_in(todo["url"], value_set=added["url"]))
    _reset_peak()
    before = _memory("VmRSS")
    started = time.perf_counter()
    if step == "sort":
        listing.sort_by("url")
        planned = 0
    else:
        work = ingest.prepare("unused", tables, None, None, unit_objects=lambda n: 1000,
                              unit_bytes=lambda b: 2**31, before_write=lambda: None)
        planned = work.pending.num_rows
    seconds = time.perf_counter() - started
    peak = _memory("VmHWM")
    results.put((seconds, max(0, peak - before), planned))


def measure(tables: str, step: str, new: int) -> tuple[float, int, int]:
    return in_fresh_process(_measure, tables, step, new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; medians are shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tables = f"{folder}/tables"
        _first_run(tables, args.objects, args.studies)
        steps = {"sort the listing by url (baseline)": "sort", "no-op rerun": "noop",
                 f"rerun with {args.new:,} new objects": "new"}
        runs = {name: [measure(tables, step, args.new) for _ in range(args.repeat)]
                for name, step in steps.items()}
    print(f"{args.objects:,} objects already processed in one run; medians of {args.repeat} runs, each in a "
          f"fresh process (spread: min-max)")
    base = statistics.median(r[0] for r in runs["sort the listing by url (baseline)"])
    for name, found in runs.items():
        seconds = [r[0] for r in found]
        memory = statistics.median(r[1] for r in found)
        print(f"{name}: {statistics.median(seconds):.2f} s ({min(seconds):.2f}-{max(seconds):.2f}) = "
              f"{statistics.median(seconds) / base:.2f}x the sort; peak +{memory / 2**20:,.0f} MiB; "
              f"rows to run: {found[0][2]:,}")


if __name__ == "__main__":
    main()
