"""How the whole pipeline job scales from one worker to many, against the machine's own N-process gain.

Usage: python benchmarks/worker_scaling.py [FOLDER] [--rounds 2] [--objects 16000] [--workers 1 2 4 8 16]
       [--json F]

Meant for a machine with many cores (on 2 cores, `pipeline_scaling.py` says the same for 1 and 2). The
workload is the one `pipeline_scaling.py` builds. Each round times the engine alone in this process, then for
each N the machine's own gain of N CPU-bound processes over one and the whole job (list, scan, plan, run,
finalize; cluster start-up not timed) on an embedded LocalCluster of N workers. It prints, per N, the
job's speed-up over one worker beside the machine's N-process gain (medians and ranges over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from pipeline_scaling import engine_alone, machine_parallelism, on_cluster, spread
from workload import SECRET, sized_workload

from pipeline.deid.keys import SECRET_ENV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--objects", type=int, default=16000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    args = parser.parse_args()
    os.environ.setdefault(SECRET_ENV, SECRET.decode())
    counts = sorted(set(args.workers) | {1})
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files, distinct, copies = sized_workload(root, args.folder, args.objects)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} objects ({distinct} distinct, {copies} copies), {megabytes:.1f} MB, "
              f"{os.cpu_count()} cores", flush=True)
        for number in range(args.rounds):
            this = {"engine": engine_alone(files, root / "engine-out"), "machine": {}, "job": {}}
            for n in counts:
                this["machine"][n] = machine_parallelism(n) if n > 1 else 1.0
                this["job"][n] = on_cluster(n, root / "source", root / f"job-{n}", files[::copies])
                print(f"round {number + 1}, {n:2d} workers: {this['job'][n]['total']:.2f} s whole job "
                      f"(machine's own gain {this['machine'][n]:.2f}x)", flush=True)
            rounds.append(this)
            if args.json:
                args.json.write_text(json.dumps({"objects": len(files), "megabytes": megabytes,
                                                 "rounds": rounds}, indent=1))
    print(f"engine alone, one process: {spread([len(files) / r['engine'] for r in rounds], ' objects/s')}")
    print("workers | whole job, objects/s | ÷ 1 worker | machine's own N-process gain | share of it")
    for n in counts:
        speed = [len(files) / r["job"][n]["total"] for r in rounds]
        gain = [r["job"][1]["total"] / r["job"][n]["total"] for r in rounds]
        machine = [r["machine"][n] for r in rounds]
        share = [g / m for g, m in zip(gain, machine, strict=True)]
        print(f"{n:7d} | {spread(speed, '')} | {spread(gain)} | {spread(machine)} | {spread(share)}")
    run_share = [r["job"][counts[-1]]["run"] / r["job"][counts[-1]]["total"] for r in rounds]
    print(f"with {counts[-1]} workers the run stage is {spread(run_share, '')} of the whole job "
          "(the rest: list, scan, plan, finalize)")


if __name__ == "__main__":
    main()
