"""Bytes the header scan reads per object, against the object's size: large objects should cost <= 64 KiB.

Usage (from the repository root): python -m benchmarks.scan_header [--repeat 3]
Scans the shared corpus (when present) and generated large objects in a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydicom import dcmread
from pydicom.data import get_testdata_file

from pipeline.listing import list_objects
from pipeline.scan import scan

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MIB = 1024 * 1024
LARGE = MIB


def generate(folder: Path, private_bytes: int) -> None:
    """CT objects of 1 to 64 MiB of pixel data, optionally with a private block before the identifiers."""
    template = get_testdata_file("CT_small.dcm")
    for number, mib in enumerate([1, 2, 4, 8, 16, 32, 64]):
        ds = dcmread(template)
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
        ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, 2 * mib  # 512 KiB a frame
        ds.PixelData = bytes(mib * MIB)
        if private_bytes:
            ds.private_block(0x0009, "BENCHMARK", create=True).add_new(0x01, "OB", bytes(private_bytes))
        ds.save_as(folder / f"generated-{mib:02d}MiB.dcm", enforce_file_format=True)


def report(name: str, inventory: pa.Table) -> None:
    large = inventory.filter(pc.greater_equal(inventory["size"], LARGE))
    if not large.num_rows:
        print(f"{name}: no objects of 1 MiB or more")
        return
    read, size = large["header_bytes_read"], large["size"]
    ratios = pc.divide(read.cast(pa.float64()), size.cast(pa.float64())).to_pylist()
    print(f"{name}: {large.num_rows} objects >= 1 MiB, {pc.sum(size).as_py() / MIB:.1f} MiB in all")
    print(f"  bytes read per object: median {statistics.median(read.to_pylist()) / 1024:.1f} KiB, "
          f"max {pc.max(read).as_py() / 1024:.1f} KiB, "
          f"within 64 KiB: {sum(r <= 65536 for r in read.to_pylist())}/{large.num_rows}")
    print(f"  read/size: median {statistics.median(ratios):.5f}, max {max(ratios):.5f}, "
          f"total {pc.sum(read).as_py() / pc.sum(size).as_py():.5f}")
    over = large.filter(pc.greater(read, 65536))
    for url, got, total in zip(over["url"].to_pylist(), over["header_bytes_read"].to_pylist(),
                               over["size"].to_pylist(), strict=True):
        print(f"  over 64 KiB: {Path(url).name}: {got / 1024:.0f} KiB of {total / 1024:.0f} KiB")


def timed_scan(source: str, repeat: int) -> tuple[pa.Table, float]:
    listing = list_objects(source)
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        inventory = scan(listing)
        seconds.append(time.perf_counter() - started)
    return inventory, statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="scans per source; the median time is shown")
    args = parser.parse_args()
    if CORPUS.is_dir():
        inventory, seconds = timed_scan(str(CORPUS), args.repeat)
        share = pc.sum(inventory["header_bytes_read"]).as_py() / pc.sum(inventory["size"]).as_py()
        print(f"corpus: {inventory.num_rows} objects scanned in {seconds:.2f} s (median of {args.repeat}), "
              f"read {share:.3f} of all bytes")
        report("corpus", inventory)
    else:
        print(f"corpus: absent ({CORPUS}), skipped")
    for name, private_bytes in (("generated", 0), ("generated with a 256 KiB private block", 256 * 1024)):
        with tempfile.TemporaryDirectory() as folder:
            generate(Path(folder), private_bytes)
            inventory, seconds = timed_scan(folder, args.repeat)
            print(f"{name}: {inventory.num_rows} objects in {seconds:.3f} s (median of {args.repeat})")
            report(name, inventory)


if __name__ == "__main__":
    main()
