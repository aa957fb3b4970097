"""Engine throughput against pydicom read + write of the same files, measured in the same run.

Usage: python benchmarks/engine.py [--rounds 5] [FOLDER]

FOLDER defaults to ../shared/corpus (else pydicom's bundled test files). Files are held in memory so
that both sides measure parsing, processing and encoding, not the disk. Each round times the baseline
(pydicom dcmread + save_as) and the engine (parse + apply + serialize) over the same files, in
alternating order; the figures printed are medians over rounds, with their spread as the noise.
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

from pipeline.deid import DeidError, apply, parse, serialize

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def baseline(data: bytes) -> None:
    ds = pydicom.dcmread(BytesIO(data), force=True)
    ds.save_as(BytesIO())


def engine(data: bytes) -> None:
    out, _ = apply(parse(data), secret="benchmark")
    serialize(out)


def usable(folder: Path) -> list[bytes]:
    """Files both sides can process, so that neither is timed on failures."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        try:
            baseline(data)
            engine(data)
        except (DeidError, Exception):
            continue
        found.append(data)
    return found


def timed(fn, files: list[bytes]) -> float:
    start = time.perf_counter()
    for data in files:
        fn(data)
    return time.perf_counter() - start


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
    ratios, base_times, engine_times = [], [], []
    for i in range(args.rounds):
        pair = [(baseline, base_times), (engine, engine_times)]
        for fn, times in pair if i % 2 == 0 else reversed(pair):
            times.append(timed(fn, files))
        ratios.append(base_times[-1] / engine_times[-1])
    base, eng = statistics.median(base_times), statistics.median(engine_times)
    print(f"{len(files)} files, {megabytes:.1f} MB from {folder}, {args.rounds} rounds")
    print(f"baseline pydicom read+write: {len(files) / base:8.1f} files/s {megabytes / base:8.1f} MB/s")
    print(f"engine parse+apply+write:    {len(files) / eng:8.1f} files/s {megabytes / eng:8.1f} MB/s")
    print(f"engine / baseline throughput: median {statistics.median(ratios):.2f}x "
          f"(rounds ranged {min(ratios):.2f}x to {max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
