"""A fuzzing campaign: kinds in turn, seeds and profiles drawn from one seeded RNG, outcomes tallied."""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pipeline.deid import Profile

from .check import FAILURES, Outcome, judge
from .layout import Layout
from .mutations import KINDS
from .seeds import Seed

COLUMNS = ("mutants", "n/a", "refused", "written", *FAILURES)
PROFILES = {
    "basic": Profile(),
    "modified-dates": Profile(retain_long_modified_dates=True, retain_safe_private=True),
    "private-uids": Profile(retain_private_tags=True, clean_descriptions=True, retain_uids=True),
    "full-dates": Profile(retain_long_full_dates=True, retain_device_identity=True,
                          retain_institution_identity=True, retain_patient_characteristics=True),
}


@dataclass(frozen=True)
class Case:
    """Everything a mutant is rebuilt from."""

    seed: str
    kind: str
    rng_seed: int
    profile: str

    def command(self) -> str:
        return (f"python scripts/fuzz.py --replay '{self.seed}' {self.kind} {self.rng_seed} "
                f"--profile {self.profile}")


@dataclass
class Tally:
    """Counts by kind and class, refusals by reason, and every failing case by pattern."""

    by_kind: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    reasons: Counter = field(default_factory=Counter)
    patterns: dict[tuple[str, str], list[Case]] = field(default_factory=lambda: defaultdict(list))
    sizes: dict[str, int] = field(default_factory=dict)

    def add(self, case: Case, outcome: Outcome) -> None:
        self.by_kind[case.kind][outcome.cls] += 1
        self.by_kind[case.kind]["mutants"] += 1
        if outcome.cls == "refused":
            self.reasons[outcome.detail] += 1
        if outcome.cls in FAILURES:
            self.patterns[(outcome.cls, f"{case.kind}: {outcome.signature}")].append(case)

    def total(self, cls: str) -> int:
        return sum(c[cls] for c in self.by_kind.values())

    def table(self) -> str:
        """Counts by kind and class, then refusals by reason and failure patterns with a reproducer each."""
        kinds = sorted(self.by_kind)
        width = max([len(k) for k in kinds] + [5])
        lines = [f"{'kind':<{width}} " + " ".join(f"{c:>10}" for c in COLUMNS)]
        for name in kinds:
            lines.append(f"{name:<{width}} " + " ".join(f"{self.by_kind[name][c]:>10}" for c in COLUMNS))
        lines.append(f"{'total':<{width}} " + " ".join(f"{self.total(c):>10}" for c in COLUMNS))
        lines += ["", "refused by reason: " + ", ".join(f"{r} {n}" for r, n in self.reasons.most_common())]
        if self.patterns:
            lines += ["", "failure patterns (count, then a reproducer: basic profile first, smallest seed):"]
            for (cls, signature), cases in sorted(self.patterns.items(), key=lambda p: (p[0][0], -len(p[1]))):
                lines += [f"  {cls:<10} {len(cases):>5}  {signature}",
                          f"{'':18}{self.smallest(cases).command()}"]
        return "\n".join(lines)

    def smallest(self, cases: list[Case]) -> Case:
        """The reproducer to try first: under the basic profile if any, from the smallest seed."""
        return min(cases, key=lambda c: (c.profile != "basic", self.sizes.get(c.seed, 0), c.rng_seed))


def mutant(seed: Seed, kind: str, rng_seed: int, layouts: dict[str, Layout] | None = None) -> bytes | None:
    """The mutant of (seed, kind, rng seed), or None when the kind finds nothing to mutate in the seed."""
    layout = layouts.get(seed.name) if layouts is not None else None
    if layout is None:
        layout = Layout(seed.data)
        if layouts is not None:
            layouts[seed.name] = layout
    return KINDS[kind](layout, random.Random(rng_seed))


@contextmanager
def quiet() -> Iterator[None]:
    """No warnings and no pydicom log lines: mutants make thousands, and the tally says what matters."""
    logger = logging.getLogger("pydicom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.disabled = True
        try:
            yield
        finally:
            logger.disabled = False


def run(seeds: list[Seed], *, master_seed: int, profiles: Iterable[str], kinds: Iterable[str] | None = None,
        per_kind: int | None = None, seconds: float | None = None,
        progress: Callable[[Case, Outcome], None] | None = None) -> Tally:
    """Mutants of every kind in turn until each has `per_kind` of them or `seconds` have passed."""
    kinds, profiles = list(kinds or KINDS), list(profiles)
    rng, tally, layouts = random.Random(master_seed), Tally(), {}
    tally.sizes = {s.name: len(s.data) for s in seeds}
    deadline = time.monotonic() + seconds if seconds is not None else None
    with quiet():
        while True:
            for name in kinds:
                if per_kind is not None and tally.by_kind[name]["mutants"] >= per_kind:
                    continue
                seed, profile, rng_seed = rng.choice(seeds), rng.choice(profiles), rng.getrandbits(32)
                data = mutant(seed, name, rng_seed, layouts)
                case = Case(seed.name, name, rng_seed, profile)
                if data is None:
                    tally.by_kind[name]["n/a"] += 1
                    continue
                outcome = judge(data, PROFILES[profile])
                tally.add(case, outcome)
                if progress is not None:
                    progress(case, outcome)
            if deadline is not None and time.monotonic() > deadline:
                return tally
            if per_kind is not None and all(tally.by_kind[k]["mutants"] >= per_kind for k in kinds):
                return tally
