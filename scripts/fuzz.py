"""Fuzz the engine with structure-aware mutants of planted seeds; print a summary and save reproducers.

    python scripts/fuzz.py --seconds 120                       # all kinds, all profiles, pydicom seeds
    python scripts/fuzz.py --seconds 3600 --corpus ../shared/corpus --out fuzz-failures
    python scripts/fuzz.py --replay 'pydicom:CT_small.dcm@undefined' sq-as-un 1234 --profile basic

A reproducer is (seed, kind, rng seed, profile): the seed is rebuilt from pydicom's test files (or the
corpus given with --corpus), never stored. Exits 1 when any mutant leaked, raised an untyped error,
hung, gave an unreadable output, made the two walkers disagree, or was written by the engine but read
otherwise by the pipeline's header scan.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fuzzing.campaign import PROFILES, Case, Tally, mutant, quiet, run  # noqa: E402
from fuzzing.check import FAILURES, judge, walkers  # noqa: E402
from fuzzing.mutations import KINDS  # noqa: E402
from fuzzing.seeds import bundled_seeds, by_name, corpus_seeds, needles_for  # noqa: E402


def save(tally: Tally, out: Path, failures: list[tuple[Case, object]], master_seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "failures.jsonl", "w", encoding="utf-8") as f:
        for case, outcome in failures:
            f.write(json.dumps({"seed": case.seed, "kind": case.kind, "rng_seed": case.rng_seed,
                                "profile": case.profile, "class": outcome.cls, "detail": outcome.detail,
                                "replay": case.command()}) + "\n")
    (out / "summary.txt").write_text(f"master seed {master_seed}\n{tally.table()}\n", encoding="utf-8")


def replay(args: argparse.Namespace) -> int:
    seed_name, kind, rng_seed = args.replay
    corpus = Path(args.corpus) if args.corpus else None
    seed = by_name(seed_name, corpus)
    data = mutant(seed, kind, int(rng_seed))
    if data is None:
        print(f"{kind} finds nothing to mutate in {seed_name}")
        return 2
    profile = PROFILES[args.profile[0] if args.profile else "basic"]
    with quiet():
        outcome = judge(data, profile)
        print(f"{outcome.cls}: {outcome.detail}  ({len(data)} bytes, seed {len(seed.data)} bytes)")
        for name, answer in walkers(data, profile).items():
            if isinstance(answer, str):
                print(f"  {name}: {answer}")
                continue
            print(f"  {name}: wrote {len(answer)} bytes")
            for needle in needles_for(profile):
                at = answer.find(needle.value)
                if at >= 0:
                    print(f"    @{at} {needle.where}: {answer[max(0, at - 32):at + 32]!r}")
    if args.write_mutant:
        if seed_name.startswith("corpus:"):
            print("not writing a mutant of a corpus file (licences): replay it instead")
        else:
            Path(args.write_mutant).write_bytes(data)
    return 1 if outcome.cls in FAILURES else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120, help="how long to run (default 120)")
    parser.add_argument("--seed", type=int, default=None, help="master RNG seed (default: from the clock)")
    parser.add_argument("--profile", action="append", choices=sorted(PROFILES),
                        help="profile(s) to draw from (default: all)")
    parser.add_argument("--kind", action="append", choices=sorted(KINDS),
                        help="mutation kind(s) (default: all)")
    parser.add_argument("--corpus", help="also seed from every file of this folder (local runs only)")
    parser.add_argument("--max-seed-bytes", type=int, default=256 * 1024, help="largest corpus file used")
    parser.add_argument("--out", default="fuzz-failures", help="folder for failures.jsonl and summary.txt")
    parser.add_argument("--replay", nargs=3, metavar=("SEED", "KIND", "RNG_SEED"), help="judge one mutant")
    parser.add_argument("--write-mutant", metavar="PATH", help="with --replay: save the mutant's bytes")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args)
    master_seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(31)
    seeds = bundled_seeds()
    if args.corpus:
        seeds += corpus_seeds(Path(args.corpus), args.max_seed_bytes)
    print(f"master seed {master_seed}, {len(seeds)} seeds, {args.seconds:g} s", flush=True)
    failures: list = []
    last = [time.monotonic()]

    def progress(case: Case, outcome) -> None:
        if outcome.cls in FAILURES:
            failures.append((case, outcome))
        if time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            print(f"  ... {len(failures)} failures so far", file=sys.stderr, flush=True)

    tally = run(seeds, master_seed=master_seed, profiles=args.profile or PROFILES, kinds=args.kind,
                seconds=args.seconds, progress=progress)
    print(tally.table())
    save(tally, Path(args.out), failures, master_seed)
    print(f"\nreproducers in {args.out}/failures.jsonl")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
