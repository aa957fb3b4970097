"""Seconds from `dicom-deid run`'s start to the first line of each stage, and its longest silence, on a
pseudo-terminal and on a pipe.

Usage (from the repository root):
    python -m benchmarks.first_feedback [--objects 300] [--rounds 3] [--workers N]

Each round runs the whole command (in its own process for a job this small, or on an embedded local
cluster of N workers with --workers; a generated archive of distinct CT objects, a fresh DEST and
TABLES) with its output on a pseudo-terminal, as a person at a shell sees it, and
then into a pipe, as a log file gets it, timing every chunk of output as it arrives. Printed per stage:
the median seconds from process start to the stage's first output (with the spread over rounds), and
the longest time the screen or log stayed unchanged, with what it showed then. The baseline, measured in
the same run, is the bare interpreter starting and exiting (`python -c pass`): figures are also given as
multiples of it, since a loaded machine slows both alike.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import io
import os
import pty
import re
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

# What each stage says first, in the order stages run.
STAGES = (("cluster", "starting a local Dask cluster"), ("listing", "listing SOURCE"),
          ("scan", "reading the headers"), ("plan", "planning work units"), ("run", "de-identify"),
          ("finalize", "writing the manifest"))
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SECRET = "first-feedback-benchmark-secret"


@dataclass
class Timeline:
    """What a command wrote, chunk by chunk, with the seconds since its start at which each arrived."""

    chunks: list[tuple[float, str]]
    ended: float
    code: int

    @property
    def text(self) -> str:
        return "".join(chunk for _, chunk in self.chunks)

    def first(self, marker: str) -> float | None:
        """Seconds until `marker` had appeared in full, or None if it never did."""
        seen = ""
        for at, chunk in self.chunks:
            seen += chunk
            if marker in seen:
                return at
        return None

    def longest_silence(self) -> tuple[float, str]:
        """The longest stretch with no output (from the start, between chunks, to the exit) and the last
        line shown before it."""
        longest, shown, before, last = 0.0, "", 0.0, ""
        for at, chunk in [*self.chunks, (self.ended, "")]:
            if at - before > longest:
                longest, shown = at - before, last
            before = at
            last = _last_line(last + chunk) or last
        return longest, shown


def _last_line(text: str) -> str:
    """The line a terminal shows last: after the last newline and the last carriage return, no escapes."""
    lines = [line for line in ESCAPES.sub("", text).replace("\r", "\n").split("\n") if line.strip()]
    return lines[-1].strip() if lines else ""


def watch(argv: list[str], env: dict[str, str], terminal: bool, timeout: float = 600) -> Timeline:
    """Run a command with stdout and stderr on a pseudo-terminal (40 rows, 120 columns) or one pipe,
    recording when each chunk of output arrives."""
    if terminal:
        reader, writer = pty.openpty()
        fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    else:
        reader, writer = os.pipe()
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=writer, stderr=writer, env=env)
    os.close(writer)
    chunks: list[tuple[float, str]] = []
    decoder = io.IncrementalNewlineDecoder(None, translate=False)
    try:
        while time.monotonic() - started < timeout:
            ready, _, _ = select.select([reader], [], [], 0.05)
            if not ready:
                quiet_since = chunks[-1][0] if chunks else 0.0
                if process.poll() is not None and time.monotonic() - started > quiet_since + 1:
                    break  # exited, and whatever still holds the output open has said nothing for 1 s
                continue
            try:
                data = os.read(reader, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not data:
                break
            chunks.append((time.monotonic() - started, decoder.decode(data.decode(errors="replace"))))
        code = process.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(reader)
    return Timeline(chunks, time.monotonic() - started, code)


def make_archive(folder: Path, objects: int, per_study: int = 25) -> None:
    """`objects` distinct CT objects (pydicom's CT_small under new UIDs), `per_study` to a study."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for n in range(objects):
        if n % per_study == 0:
            study, series = generate_uid(), generate_uid()
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n % per_study + 1
        path = folder / f"study{n // per_study:04d}" / f"{n:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)


def run_command(work: Path, extra: list[str] = ()) -> list[str]:
    """`dicom-deid run` on the archive in `work`, into fresh DEST and TABLES there."""
    for name in ("dest", "tables"):
        subprocess.run(["rm", "-rf", str(work / name)], check=True)
    return [sys.executable, "-m", "pipeline.cli", "run", str(work / "src"), str(work / "dest"),
            "--tables", str(work / "tables"), *extra]


def environment() -> dict[str, str]:
    """This environment with the job's secret, and this checkout first on the path (subprocesses too)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "DICOM_DEID_SECRET": SECRET}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, help="start a local cluster of N workers (a job of at most "
                        "1,000 objects otherwise runs in the command's own process)")
    args = parser.parse_args()
    extra = ["--workers", str(args.workers)] if args.workers else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_archive(work / "src", args.objects)
        env = environment()
        baseline = [watch([sys.executable, "-c", "pass"], env, terminal=False).ended for _ in range(5)]
        floor = statistics.median(baseline)
        print(f"baseline: python -c pass exits after {_spread(baseline)}")
        for terminal in (True, False):
            firsts: dict[str, list[float]] = {name: [] for name in ("first output", *dict(STAGES), "exit")}
            silences: list[tuple[float, str]] = []
            for _ in range(args.rounds):
                timeline = watch(run_command(work, extra), env, terminal)
                if timeline.code != 0:
                    raise SystemExit(f"dicom-deid run failed ({timeline.code}):\n{timeline.text}")
                firsts["first output"].append(timeline.chunks[0][0])
                for name, marker in STAGES:
                    at = timeline.first(marker)
                    if at is not None:
                        firsts[name].append(at)
                firsts["exit"].append(timeline.ended)
                silences.append(timeline.longest_silence())
            where = "pseudo-terminal" if terminal else "pipe"
            print(f"\n{where}: {args.objects} objects, {args.rounds} rounds, seconds from process start "
                  "(median, min-max; x baseline)")
            for name, values in firsts.items():
                if values:
                    print(f"  {name:<13} {_spread(values)}  {statistics.median(values) / floor:5.1f}x")
            gap, shown = max(silences)
            print(f"  longest silence: {_spread([s for s, _ in silences])}; worst {gap:.2f} s after "
                  f"{shown[:70]!r}")
            if not terminal:
                redraws = bool(re.search("[\r\x1b]", timeline.text))
                print(f"  carriage returns or escapes in the pipe: {redraws}")


if __name__ == "__main__":
    main()
