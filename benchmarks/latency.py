"""One worker's throughput with 20 ms of storage latency per request against none, on the same files.

Usage: python benchmarks/latency.py [--rounds 3] [--latency 0.02] [FOLDER]

Storage is a registered fsspec filesystem, "slow://": local disk answering every request `latency` seconds
late, like an object store across a network. A request is an open (which a whole read, a range read or a
write is, as one GET or PUT is on S3), an info, or one listing. It reaches the pipeline the way S3 does,
through the URL protocol and storage options. Each round runs the whole job (list, scan, plan, run,
finalize) on one worker with one thread, without and with latency. Printed figures are medians over
rounds; the aim is a whole job within 1.3x of its time without latency.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import fsspec
from distributed import Client
from fsspec.implementations.local import LocalFileSystem
from workload import SECRET, make_workload, timed_job

from pipeline.job import local_cluster


class SlowFileSystem(LocalFileSystem):
    """Local disk whose every request waits `latency` seconds first."""

    protocol = ("slow",)

    def __init__(self, latency: float = 0.02, **kwargs) -> None:
        super().__init__(auto_mkdir=True, **kwargs)
        self.latency = latency
        self.listing = threading.local()  # a listing is one request, like an S3 page, not one per entry

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return super()._strip_protocol(path.removeprefix("slow://"))

    def _wait(self) -> None:
        if not getattr(self.listing, "active", False):
            time.sleep(self.latency)

    def _open(self, path, mode="rb", **kwargs):
        self._wait()
        return super()._open(path, mode=mode, **kwargs)

    def info(self, path, **kwargs):
        self._wait()
        return super().info(path, **kwargs)

    def ls(self, path, detail=False, **kwargs):
        self._wait()
        self.listing.active = True
        try:
            return super().ls(path, detail=detail, **kwargs)
        finally:
            self.listing.active = False


def register() -> None:
    """By import path, so worker processes (which share this folder on sys.path) can load it too."""
    fsspec.register_implementation("slow", "latency.SlowFileSystem", clobber=True)


def one_worker(source: Path, out: Path, latency: float) -> dict[str, float]:
    with local_cluster(1, key=SECRET) as cluster, Client(cluster) as client:
        client.run(register)
        return timed_job(client, f"slow://{source}", out, storage_options={"latency": latency})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args()
    register()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_workload(root / "source", args.folder)
        fast, slow = [], []
        for _ in range(args.rounds):
            fast.append(one_worker(root / "source", root / "fast", 0.0))
            slow.append(one_worker(root / "source", root / "slow", args.latency))
    print(f"{len(files)} objects, one worker, {args.latency * 1000:.0f} ms per request, "
          f"{args.rounds} rounds (medians)")
    for stage in ("prepare", "run", "finalize", "total"):
        without = statistics.median(r["objects"] / r[stage] for r in fast)
        with_latency = statistics.median(r["objects"] / r[stage] for r in slow)
        ratios = [b[stage] / a[stage] for a, b in zip(fast, slow, strict=True)]
        print(f"{stage:9s} {without:8.1f} objects/s without latency, {with_latency:8.1f} with: slowdown "
              f"{statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}x-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
