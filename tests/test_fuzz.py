"""Hostile input, as an attacker would make it: every mutant is refused with DeidError or leaks nothing.

Seeds are pydicom's test files and datasets built here, with distinctive identifying values planted
at several depths; the leak check looks for those bytes in the output, independently of the engine.
Longer runs: `python scripts/fuzz.py --seconds 600` (figures and reproducers, see its --help).
"""

import warnings

import pytest
from fuzzing.campaign import PROFILES, mutant, run
from fuzzing.check import SECRET, leaked
from fuzzing.mutations import KINDS
from fuzzing.seeds import NEEDLES, bundled_seeds, by_name

from pipeline.deid import DeidError
from pipeline.deid.stream import deidentify_bytes

MASTER_SEED = 20261127
PER_KIND = 80  # 20 kinds x 80 = 1600 mutants: about a minute of CPU
PLANTED_EVERYWHERE = {"PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
                      "OperatorsName in sequence items", "PerformingPhysicianName at depth 2",
                      "ReferencedSOPInstanceUID at depth 2", "RadiopharmaceuticalStartDateTime at depth 1"}


@pytest.fixture(scope="module")
def seeds():
    return bundled_seeds()


def test_seeds_carry_the_planted_values_and_come_out_clean(seeds):
    """The planted values are all in the seeds, and the engine removes them from well-formed files."""
    assert len(seeds) >= 20
    for seed in seeds:
        assert {n.where for n in NEEDLES if n.value in seed.data} >= PLANTED_EVERYWHERE, seed.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, profile in PROFILES.items():
                try:
                    output = deidentify_bytes(seed.data, profile, secret=SECRET).data
                except DeidError as refusal:
                    # Kept private elements may copy a removed value (JPEG2000.dcm's (0009,1042) holds
                    # the Series Date): the guard refuses that, and only that, under retain_private_tags.
                    assert refusal.reason == "leak-guard" and profile.retain_private_tags, (seed.name, name)
                    continue
                assert not leaked(output, profile), (seed.name, name)


def test_the_leak_check_sees_planted_values_and_honours_what_a_profile_keeps(seeds):
    data = seeds[0].data
    assert "PatientName" in leaked(data, PROFILES["basic"])
    assert "StudyInstanceUID" in leaked(data, PROFILES["basic"])
    assert "StudyInstanceUID" not in leaked(data, PROFILES["private-uids"])  # UIDs retained on purpose
    assert "StudyDate" not in leaked(data, PROFILES["full-dates"])
    assert "StudyDate" in leaked(data, PROFILES["modified-dates"])  # shifted, so the original must go


def test_the_judge_sees_a_header_scan_that_reads_an_object_otherwise_than_the_engine(seeds, monkeypatch):
    """The header scan groups objects by the UIDs it reads: one it reads otherwise than the engine, or
    refuses while the engine writes it, is a disagreement."""
    import fuzzing.check as check

    data, profile = seeds[0].data, PROFILES["basic"]
    assert check.judge(data, profile).cls == "written"
    scanned = check.read_header(data, True)
    monkeypatch.setattr(check, "read_header", lambda data, whole: {**scanned, "study_uid": "1.2.3"})
    assert check.judge(data, profile) == check.Outcome("disagree", "the header scan read another study_uid "
                                                                    "than the engine")
    monkeypatch.setattr(check, "read_header", lambda data, whole: {**scanned, "error": "malformed"})
    assert "refused it (malformed)" in check.judge(data, profile).detail


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_mutates_and_reproduces_from_seed_kind_and_rng_seed(seeds, kind):
    made = 0
    for index, seed in enumerate(seeds):
        first = mutant(seed, kind, index)
        if first is None:
            continue
        made += 1
        assert first != seed.data, (seed.name, kind)
        assert mutant(seed, kind, index) == first, (seed.name, kind)
    assert made >= len(seeds) // 3, kind


def test_a_seed_is_rebuilt_byte_for_byte_from_its_name(seeds):
    for seed in seeds[::5]:
        assert by_name(seed.name).data == seed.data, seed.name


def test_bounded_fuzz_run_no_leak_no_untyped_error_walkers_agree(seeds):
    """A fixed run over every kind and profile; the message lists each failure pattern with a reproducer."""
    tally = run(seeds, master_seed=MASTER_SEED, profiles=PROFILES, per_kind=PER_KIND)
    assert all(tally.by_kind[kind]["mutants"] == PER_KIND for kind in KINDS)
    assert tally.total("refused") > 0 and tally.total("written") > 0, tally.table()
    failures = {cls: tally.total(cls) for cls in ("leaks", "untyped", "disagree", "bad-output", "hang")}
    assert failures == dict.fromkeys(failures, 0), "\n" + tally.table()


def test_the_header_scans_inline_run_reads_every_mutant_as_the_full_reading_does(seeds, monkeypatch):
    """The scan reads common elements inline and leaves every other one to the strict reader: with the inline
    run turned off the answers (columns, refusal, or how many bytes more it needs) must be the same, on
    every kind of mutant, read whole and cut short."""
    import pipeline.headers as headers

    def answers(data: bytes) -> list:
        found = []
        for cut in (len(data), 2000, 700, 300):
            try:
                found.append(headers.read_header(data[:cut], cut >= len(data)))
            except headers.NeedMore as more:
                found.append(("need-more", more.wanted))
        return found

    inputs = [seed.data for seed in seeds]
    inputs += [m for kind in sorted(KINDS) for index, seed in enumerate(seeds[::2])
               if (m := mutant(seed, kind, MASTER_SEED + index)) is not None]
    assert len(inputs) > 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inline = [answers(data) for data in inputs]
        monkeypatch.setattr(headers, "_plain_run", lambda body, pos, last, *rest: (pos, last))
        full = [answers(data) for data in inputs]
    assert inline == full
    assert sum("error" in found[0] for found in full) > 20 and sum("error" not in f[0] for f in full) > 20
