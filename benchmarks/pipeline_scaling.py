"""Pipeline throughput with one and two Dask workers against the engine alone, on the same files, in one run.

Usage: python benchmarks/pipeline_scaling.py [--rounds 3] [--copies 4] [FOLDER]

FOLDER defaults to ../shared/corpus (else pydicom's bundled test files); objects the engine accepts are
copied once per SOP Instance UID to a temporary folder, and again under `copies - 1` other SOP Instance
UIDs so that the run is long enough to measure. Each round times, on local folders: the engine
alone in this process (read file, de-identify, write file), then the whole job (list, scan, plan, run,
finalize) on the LocalCluster the job embeds, of one worker and of two (start-up not timed).
Printed figures are medians over rounds; "run stage" excludes listing, scanning and finalizing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from distributed import Client
from workload import SECRET, engine_once, make_workload, timed_job

from pipeline.job import local_cluster


def engine_alone(files: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in files:
        (out / path.name).write_bytes(engine_once(path.read_bytes()))
    return time.perf_counter() - start


def _burn(_: int = 0) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    return time.perf_counter() - start


def machine_parallelism() -> float:
    """Two processes of pure CPU against one: the most two workers could gain on this machine right now."""
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_burn, range(2)))  # start both processes before timing
        alone = _burn()
        start = time.perf_counter()
        list(pool.map(_burn, range(2)))
        return 2 * alone / (time.perf_counter() - start)


def on_cluster(workers: int, source: Path, out: Path) -> dict[str, float]:
    with local_cluster(workers, key=SECRET) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("pipeline.execute"))  # imports are start-up, not throughput
        return timed_job(client, str(source), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4, help="each object also under other UIDs (1-10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_workload(root / "source", args.folder, copies=args.copies)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        engine, one, two, machine = [], [], [], []
        for _ in range(args.rounds):
            machine.append(machine_parallelism())
            engine.append(len(files) / engine_alone(files, root / "engine-out"))
            one.append(on_cluster(1, root / "source", root / "one"))
            two.append(on_cluster(2, root / "source", root / "two"))
    print(f"{len(files)} distinct objects, {megabytes:.1f} MB, {args.rounds} rounds (medians)")
    print(f"engine alone, one process:      {statistics.median(engine):8.1f} objects/s")
    for name, rounds in (("pipeline, 1 worker", one), ("pipeline, 2 workers", two)):
        total = statistics.median(r["objects"] / r["total"] for r in rounds)
        stage = statistics.median(r["objects"] / r["run"] for r in rounds)
        print(f"{name + ':':32s}{total:8.1f} objects/s whole job, {stage:8.1f} objects/s run stage")
    ratios = [b["objects"] / b["total"] / (a["objects"] / a["total"]) for a, b in zip(one, two, strict=True)]
    stage_ratios = [a["run"] / b["run"] for a, b in zip(one, two, strict=True)]
    print(f"2 workers / 1 worker: whole job {statistics.median(ratios):.2f}x "
          f"(rounds {min(ratios):.2f}x-{max(ratios):.2f}x), run stage {statistics.median(stage_ratios):.2f}x "
          f"(rounds {min(stage_ratios):.2f}x-{max(stage_ratios):.2f}x)")
    print(f"the machine itself, 2 CPU-bound processes / 1: {statistics.median(machine):.2f}x "
          f"(rounds {min(machine):.2f}x-{max(machine):.2f}x; below 2x means other load shares the cores)")
    shares = [stage / machine_gain for stage, machine_gain in zip(stage_ratios, machine, strict=True)]
    print(f"run stage gain as a share of the machine's own gain in the same round: "
          f"median {statistics.median(shares):.0%} (rounds {min(shares):.0%}-{max(shares):.0%})")
    one_worker = statistics.median(r["objects"] / r["total"] for r in one)
    print(f"1 worker / engine alone: {one_worker / statistics.median(engine):.2f}x")


if __name__ == "__main__":
    main()
