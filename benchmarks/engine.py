"""Engine throughput against pydicom read + write of the same files, measured in the same run.

Usage: python benchmarks/engine.py [--rounds 5] [FOLDER]

FOLDER defaults to ../shared/corpus (else pydicom's bundled test files). Files are held in memory so
that every side measures parsing, processing and encoding, not the disk. Each round times, over the
same files and in rotating order, the baseline (pydicom dcmread + save_as), the engine's byte path
(`deidentify_bytes`, what the pipeline runs) with its output guard and without it (the guard's
collection and search switched off), and its dataset API (parse + apply + serialize). The sides
take turns block by block (BLOCK files each, run back to back as a worker runs them; which side goes
first rotates with the block and the round), so a change in the machine's load falls on all of them
alike; the figures printed are medians over rounds, with the range of the per-round ratios as the
noise. Each side is timed by the wall clock and by this
process's CPU time: on a shared machine the wall clock also counts other processes' turns, the CPU
time only this one's work.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from pipeline.deid import DeidError, apply, basic_profile, parse, serialize
from pipeline.deid.guard import Guard
from pipeline.deid.stream import deidentify_bytes

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def baseline(data: bytes) -> None:
    ds = pydicom.dcmread(BytesIO(data), force=True)
    ds.save_as(BytesIO())


def dataset_api(data: bytes) -> None:
    out, _ = apply(parse(data), secret="benchmark")
    serialize(out)


def byte_path(data: bytes) -> None:
    deidentify_bytes(data, basic_profile(), secret="benchmark")


@contextmanager
def guard_off():
    """The walkers' hooks stay in place; what they would collect and search is skipped."""
    hooks = [name for name in ("note", "keep", "check") if hasattr(Guard, name)]
    saved = {name: getattr(Guard, name) for name in hooks}
    for name in hooks:
        setattr(Guard, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for name, hook in saved.items():
            setattr(Guard, name, hook)


def byte_path_unguarded(data: bytes) -> None:
    with guard_off():
        byte_path(data)


def usable(folder: Path) -> list[bytes]:
    """Files both sides can process, so that neither is timed on failures."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        try:
            baseline(data)
            dataset_api(data)
        except (DeidError, Exception):
            continue
        found.append(data)
    return found


BLOCK = 16


def one_round(sides: dict, files: list[bytes], turn: int) -> dict[str, tuple[float, float]]:
    """(wall seconds, CPU seconds) of each side over all files, the sides taking turns block by block."""
    names = list(sides)
    taken = {name: [0.0, 0.0] for name in names}
    for i, at in enumerate(range(0, len(files), BLOCK)):
        block = files[at:at + BLOCK]
        first = (turn + i) % len(names)
        for name in names[first:] + names[:first]:
            wall, cpu = time.perf_counter(), time.process_time()
            for data in block:
                sides[name](data)
            taken[name][0] += time.perf_counter() - wall
            taken[name][1] += time.process_time() - cpu
    return {name: (wall, cpu) for name, (wall, cpu) in taken.items()}


def report(label: str, times: dict[str, list[float]], files: int, megabytes: float) -> None:
    """Throughput and ratio to the baseline per side, then the guard's cost, by one clock."""
    print(f"by {label}:")
    base = times["baseline pydicom read+write"]
    for name, taken in times.items():
        median = statistics.median(taken)
        ratios = [b / t for b, t in zip(base, taken, strict=True)]
        print(f"  {name:30} {files / median:7.1f} files/s {megabytes / median:7.1f} MB/s  "
              f"{statistics.median(ratios):.2f}x baseline (rounds {min(ratios):.2f}x-{max(ratios):.2f}x)")
    guarded, unguarded = times["engine bytes (pipeline)"], times["engine bytes, guard off"]
    costs = [on / off - 1 for on, off in zip(guarded, unguarded, strict=True)]
    print(f"  guard cost on the byte path: {statistics.median(costs):+.0%} time "
          f"(rounds {min(costs):+.0%} to {max(costs):+.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = args.folder or (DEFAULT_CORPUS if DEFAULT_CORPUS.exists()
                             else Path(get_testdata_file("CT_small.dcm")).parent)
    warnings.simplefilter("ignore")
    files = usable(folder)
    megabytes = sum(map(len, files)) / 1e6
    sides = {"baseline pydicom read+write": baseline, "engine bytes (pipeline)": byte_path,
             "engine bytes, guard off": byte_path_unguarded, "engine dataset API": dataset_api}
    walls: dict[str, list[float]] = {name: [] for name in sides}
    cpus: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(args.rounds):
        for name, (wall, cpu) in one_round(sides, files, i).items():
            walls[name].append(wall)
            cpus[name].append(cpu)
    print(f"{len(files)} files, {megabytes:.1f} MB from {folder}, {args.rounds} rounds")
    report("wall clock", walls, len(files), megabytes)
    report("CPU time", cpus, len(files), megabytes)


if __name__ == "__main__":
    main()
