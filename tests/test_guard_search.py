"""The guard's and the cleaner's cheaper searches find exactly what one automaton over everything finds."""

from __future__ import annotations

import random
from struct import pack

import ahocorasick
import pytest
from pydicom.tag import Tag

from pipeline.deid import DeidError, Profile
from pipeline.deid.clean import SCANS_BEFORE_AUTOMATON, Cleaner
from pipeline.deid.guard import _WORD, MAX_SCANNED, MIN_HIDDEN, Guard, _hits, _removed_headers


def automaton_hits(words: list[tuple[str, int]], text: str) -> list[tuple[str, int]]:
    """The reference: every whole-word match of one automaton, in its own order."""
    automaton = ahocorasick.Automaton()
    for pattern, tag in words:
        automaton.add_word(pattern, (pattern, tag))
    automaton.make_automaton()
    last = len(text) - 1
    return [(pattern, tag) for end, (pattern, tag) in automaton.iter(text)
            if (end - len(pattern) < 0 or ord(text[end - len(pattern)]) not in _WORD)
            and (end == last or ord(text[end + 1]) not in _WORD)]


@pytest.mark.parametrize("many", [False, True], ids=["found-one-by-one", "one-automaton"])
def test_hits_are_the_automatons_in_its_order(many):
    """Overlapping matches, matches ending alike (the longer first), word edges and NUL separators."""
    rng = random.Random(20261129)
    alphabet = "ab1 .\0^"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        count = rng.randrange(MAX_SCANNED + 1, 90) if many else rng.randrange(1, MAX_SCANNED)
        words = {"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 5))): rng.randrange(99)
                 for _ in range(count)}
        assert _hits(list(words.items()), text) == automaton_hits(list(words.items()), text)


@pytest.mark.parametrize("patterns", [2, MAX_SCANNED + 20])
def test_a_kept_value_holding_a_removed_one_is_refused_with_few_or_many_removed_values(patterns):
    guard = Guard(Profile())
    for i in range(patterns):
        guard.note(0x00100020 + i, "empty", "LO", lambda i=i: f"ID-{i:05d}-X".encode())
    guard.keep(0x00204000, "LT", b"Study for ID-00001-X")  # kept free text holding the second
    with pytest.raises(DeidError) as err:
        guard.check()
    assert err.value.reason == "leak-guard" and str(Tag(0x00100021)) in err.value.detail
    clean = Guard(Profile())
    for i in range(patterns):
        clean.note(0x00100020 + i, "empty", "LO", lambda i=i: f"ID-{i:05d}-X".encode())
    clean.keep(0x00204000, "LT", b"Study for ID-00001-XY")  # part of a longer word: no hit
    clean.check()


def test_the_first_swallowed_header_is_named_as_the_automaton_named_it():
    """Headers found by their VR letters and the tag before them: planted at random in random bytes,
    the first one (by its place across the joined values) is the one the refusal names."""
    profile = Profile()
    headers = [tags_bytes + code for code, tags in _removed_headers(profile).items() for tags_bytes in tags]
    automaton = ahocorasick.Automaton()
    for code, tags in _removed_headers(profile).items():
        for tag_bytes, tag in tags.items():
            automaton.add_word((tag_bytes + code).decode("latin-1"), tag)
    automaton.make_automaton()
    rng = random.Random(7)
    for _ in range(2000):
        values = []
        for _ in range(rng.randrange(1, 4)):
            value = bytearray(rng.randbytes(rng.randrange(60)))
            for _ in range(rng.randrange(3)):
                at = rng.randrange(len(value) + 1)
                value[at:at] = rng.choice(headers)[:rng.choice([6, 6, 5])]  # some cut short: no header
            values.append(bytes(value))
        opaque = [value for value in values if len(value) >= MIN_HIDDEN]  # shorter ones hide nothing
        expected = next((tag for _, tag in automaton.iter(b"\0".join(opaque).decode("latin-1"))), None)
        guard = Guard(profile)
        for value in values:
            guard.keep(0x00191010, "OB", value)  # private: opaque whatever its length
        if expected is None:
            guard.check()
            continue
        with pytest.raises(DeidError) as err:
            guard.check()
        assert str(Tag(expected)) in err.value.detail


def test_the_cleaner_cleans_alike_before_and_after_it_builds_its_automaton():
    """The first texts are tested form by form, the later ones by the automaton: same results."""
    forms = ["Jane Doe", "PID-12345", "19700101"]
    texts = ["CT for Jane Doe", "no name here", "PID-12345 follow-up", "plain"] * SCANS_BEFORE_AUTOMATON
    cleaner = Cleaner(forms)
    found = [cleaner.clean_text(text) for text in texts]
    assert cleaner.automaton is not None
    assert found[:4] == ["CT", "no name here", "follow-up", "plain"]
    assert found == found[:4] * SCANS_BEFORE_AUTOMATON
    lazy = Cleaner(forms)
    assert [lazy.clean_text(t) for t in ["plain", "nothing"]] == ["plain", "nothing"]
    assert lazy.automaton is None  # no text held a form: no automaton was built


def test_the_swallowed_header_search_reads_bytes_not_a_pattern_of_them():
    """A VR's letters alone, or a tag with other letters after it, are no header."""
    guard = Guard(Profile())
    guard.keep(0x00191010, "OB", b"PN" * 40 + pack("<HH", 0x0010, 0x0010) + b"XX" + b"\0" * 8)
    guard.check()
