"""The dataset API as a notebook calls it, against pydicom's own read + write of the same files.

Usage: python benchmarks/dataset_api.py [--rounds 7] [--enforce] [FOLDER]

FOLDER defaults to ../shared/corpus; pydicom's CT_small.dcm is measured too. The API side reads each
file with `pydicom.dcmread` off the clock (a notebook user holds the dataset already), then times
`apply(ds)` plus `save_as` of the result (the same bytes as `save_as(..., enforce_file_format=True)`,
since the result's file meta is complete; the result writes itself from the walk's raw elements, see
pipeline/deid/written.py), and again with pydicom's own `dcmwrite` writing the result, which shows what
`apply` alone costs; the baseline times `dcmread` + `save_as` of the same bytes.
Both write to memory and hold one file's datasets at a time. Each round runs both sides over all files,
in alternating order; the figures are medians over rounds of the per-round ratio baseline / API (above
1.0x the API is faster), with their range, in wall-clock time and in CPU time of this process (less
disturbed by other load on the machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from pipeline.deid import apply

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SECRET = "benchmark"
WRITE: dict[str, bool] = {}  # --enforce: save_as(..., enforce_file_format=True), as the README shows


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(data), force=True)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def baseline(files: list[bytes]) -> tuple[float, float]:
    """Wall and CPU seconds of pydicom's read + write, summed over the files."""
    wall = cpu = 0.0
    for data in files:
        start = clocks()
        read(data).save_as(BytesIO())
        end = clocks()
        wall, cpu = wall + end[0] - start[0], cpu + end[1] - start[1]
    return wall, cpu


def by_pydicom(out: pydicom.Dataset) -> None:
    pydicom.dcmwrite(BytesIO(), out, **WRITE)


def by_itself(out: pydicom.Dataset) -> None:
    out.save_as(BytesIO(), **WRITE)


def api(files: list[bytes], write=by_itself) -> tuple[float, float]:
    """Wall and CPU seconds of apply + write, summed over the files, each read first off the clock."""
    wall = cpu = 0.0
    for data in files:
        ds = read(data)
        start = clocks()
        out, _ = apply(ds, secret=SECRET)
        write(out)
        end = clocks()
        wall, cpu = wall + end[0] - start[0], cpu + end[1] - start[1]
    return wall, cpu


def usable(paths: list[Path]) -> list[bytes]:
    """Files both sides can process, so that neither is timed on refusals."""
    found = []
    for path in paths:
        data = path.read_bytes()
        try:
            baseline([data])
            api([data])
        except Exception:
            continue
        found.append(data)
    return found


def measure(name: str, files: list[bytes], rounds: int) -> None:
    sides = {"apply(ds) + save_as": by_itself, "apply(ds) + pydicom.dcmwrite": by_pydicom}
    ratios: dict[tuple[str, str], list[float]] = {(side, clock): [] for side in sides
                                                  for clock in ("wall", "cpu")}
    api_wall = []
    for i in range(rounds):
        order = [None, *sides.values()] if i % 2 == 0 else [*sides.values(), None]
        taken = {write: baseline(files) if write is None else api(files, write) for write in order}
        for side, write in sides.items():
            for k, clock in enumerate(("wall", "cpu")):
                ratios[side, clock].append(taken[None][k] / taken[write][k])
        api_wall.append(taken[by_itself][0])
    per_file = statistics.median(api_wall) / len(files) * 1e3
    print(f"{name}: {len(files)} files, {sum(map(len, files)) / 1e6:.1f} MB, {rounds} rounds, "
          f"apply + save_as {per_file:.2f} ms per file")
    for (side, clock), found in ratios.items():
        print(f"  {clock:4} {side:29}: {statistics.median(found):.2f}x pydicom read + write "
              f"(rounds {min(found):.2f}x-{max(found):.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--enforce", action="store_true", help="write the result with enforce_file_format")
    args = parser.parse_args()
    if args.enforce:
        WRITE["enforce_file_format"] = True
    warnings.simplefilter("ignore")
    ct_small = usable([Path(get_testdata_file("CT_small.dcm"))])
    measure("CT_small.dcm (x50)", ct_small * 50, args.rounds)
    if args.folder.exists():
        files = usable(sorted(p for p in args.folder.rglob("*") if p.is_file()))
        measure(str(args.folder), files, args.rounds)


if __name__ == "__main__":
    main()
