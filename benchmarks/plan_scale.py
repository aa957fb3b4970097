"""Planning 10 million objects in 1 million studies: time and memory against just sorting by url, and tasks.

Usage (from the repository root): python -m benchmarks.plan_scale [--objects 10000000] [--studies 1000000]
Each measurement runs in a fresh process that reads the same synthetic inventory from Parquet, so peak
memory is that of the measured step alone.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.plan import plan
from pipeline.scan import INVENTORY_SCHEMA


def synthetic_inventory(objects: int, studies: int, seed: int = 0) -> pa.Table:
    """Objects spread at random over studies, in random row order, with realistic-looking urls and sizes."""
    rng = np.random.default_rng(seed)
    study = pa.array(rng.integers(0, studies, objects)).cast(pa.string())
    serial = pa.array(rng.permutation(objects)).cast(pa.string())
    columns = {
        "url": pc.binary_join_element_wise("s3://archive/dicom/", study, "/", serial, ".dcm", ""),
        "size": pa.array(rng.lognormal(np.log(500_000), 1.0, objects).astype(np.int64)),
        "study_uid": pc.binary_join_element_wise("1.2.826.0.1.3680043.10.", study, ""),
        "header_bytes_read": pa.array(np.full(objects, 65536, dtype=np.int64)),
    }
    return pa.table({f.name: columns.get(f.name, pa.nulls(objects, f.type)) for f in INVENTORY_SCHEMA},
                    schema=INVENTORY_SCHEMA)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _measure(path: str, step: str, results) -> None:
    """In a fresh process: seconds for one step and the peak memory it added above the loaded table."""
    table = pq.read_table(path).cast(INVENTORY_SCHEMA)
    before = _rss_bytes()
    started = time.perf_counter()
    if step.startswith("plan"):
        planned = plan(table)
        units = pc.count_distinct(planned["unit_id"]).as_py()
    else:
        table.sort_by("url")
        units = 0
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    results.put((seconds, max(0, peak - before), units))


def in_fresh_process(target, *args):
    """What target(*args, queue) puts on the queue, run in a spawned process: each figure starts
    from an empty heap, so peak memory is the step's own."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=target, args=(*args, results))
    process.start()
    outcome = results.get()
    process.join()
    return outcome


def measure(path: str, step: str) -> tuple[float, int, int]:
    return in_fresh_process(_measure, path, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000_000)
    parser.add_argument("--studies", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; medians are shown")
    args = parser.parse_args()
    inventory = synthetic_inventory(args.objects, args.studies)
    table_bytes = inventory.nbytes
    with tempfile.TemporaryDirectory() as folder:
        shuffled, by_url = str(Path(folder) / "shuffled.parquet"), str(Path(folder) / "by-url.parquet")
        pq.write_table(inventory, shuffled)
        pq.write_table(inventory.sort_by("url"), by_url)
        del inventory
        steps = {"sort by url": (shuffled, "sort"), "plan, rows in random order": (shuffled, "plan"),
                 "plan, rows in url order (as scan writes them)": (by_url, "plan")}
        runs = {name: [measure(*steps[name]) for _ in range(args.repeat)] for name in steps}
    print(f"inventory: {args.objects:,} objects in {args.studies:,} studies, {table_bytes / 2**20:,.0f} MiB "
          f"in memory; medians of {args.repeat} runs, each in a fresh process")
    sort_s, sort_mem, _ = (statistics.median(r[i] for r in runs["sort by url"]) for i in range(3))
    print(f"sort by url (baseline): {sort_s:.2f} s, peak +{sort_mem / 2**20:,.0f} MiB")
    for name in list(steps)[1:]:
        seconds, memory, units = (statistics.median(r[i] for r in runs[name]) for i in range(3))
        print(f"{name}: {seconds:.2f} s = {seconds / sort_s:.2f}x the sort, "
              f"{args.objects / seconds / 1e6:.2f} M objects/s; peak +{memory / 2**20:,.0f} MiB = "
              f"{memory / table_bytes:.2f}x the inventory, {memory / max(sort_mem, 1):.2f}x the sort's")
    print(f"tasks the run would submit (units): {units:,} = 1 per {args.objects / units:,.0f} objects")


if __name__ == "__main__":
    main()
