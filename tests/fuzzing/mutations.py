"""Named structure-aware mutations of a seed's bytes; (seed, kind, rng seed) always gives the same mutant."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache
from struct import pack

from .layout import ITEM_END, LONG_VRS, PIXEL_DATA, SEQUENCE_END, SHORT_VRS, UNDEFINED, Layout, Node
from .seeds import NAME, NEEDLES, NESTED_REF_SOP, REF_SOP

Mutation = Callable[[Layout, random.Random], "bytes | None"]
KINDS: dict[str, Mutation] = {}
VRS = sorted(LONG_VRS | SHORT_VRS)
INVALID_VRS = (b"ZZ", b"xx", b"\xff\xff", b"sh", b"S\0", b"\x01\x02")
# Flips seen in broken files: the left VR's bytes overwritten by the right one's.
FLIPS = {"SH": "OV", "UN": "UR", "LO": "UN", "CS": "OB", "UI": "UT", "SQ": "UN", "DS": "OD", "PN": "OW",
         "DA": "OL", "IS": "SV", "US": "UV", "UL": "OF", "OB": "SH", "OW": "LO", "UT": "ST", "LT": "UC"}
OPAQUE_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
TEXT_OR_BINARY = ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "PN", "OB", "OW", "OD", "OF", "UR")
PUBLIC_SEQUENCES = (0x00400260, 0x00540016)  # Performed Protocol Code, Radiopharmaceutical Information
CHARSETS = (b"GB18030\0", b"ISO_IR 192\0", b"ISO 2022 IR 87", b"\\ISO 2022 IR 87", b"ZQXCHARSET",
            b"ISO 2022 IR 6\\ISO 2022 IR 87", b"ISO_IR 100\\ISO_IR 144", b"\0\0", b"ISO-IR 100", b"\\\\\\ ")
ESCAPED_NAME = NAME.encode() + b"=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"
REFERENCED_SERIES, REFERENCED_SOP, PATIENT_NAME, CHARSET = 0x00081115, 0x00081155, 0x00100010, 0x00080005


def kind(name: str) -> Callable[[Mutation], Mutation]:
    def register(fn: Mutation) -> Mutation:
        KINDS[name] = fn
        return fn
    return register


@lru_cache(maxsize=256)
def _needle_offsets(data: bytes) -> tuple[int, ...]:
    found = []
    for needle in NEEDLES:
        at = data.find(needle.value)
        while at >= 0:
            found.append(at)
            at = data.find(needle.value, at + 1)
    return tuple(sorted(found))


def _pick(layout: Layout, rng: random.Random, nodes: list[Node]) -> Node | None:
    """A node, most often one just before a planted value, so a broken boundary has something to expose."""
    if not nodes:
        return None
    offsets = _needle_offsets(layout.data)
    close = [n for n in nodes if any(n.pos <= at <= n.end + 256 for at in offsets)]
    return rng.choice(close if close and rng.random() < 0.7 else nodes)


def _values(layout: Layout) -> list[Node]:
    return [n for n in layout.elements() if not n.sequence and n.length != UNDEFINED]


def _transparent(nodes: list[Node]) -> list[Node]:
    """Without private binary values: grown over what follows, one is just a longer opaque value to keep."""
    return [n for n in nodes if not (n.tag >> 16 & 1 and (n.vr or n.dict_vr) in OPAQUE_VRS)]


def _sequences(layout: Layout) -> list[Node]:
    return [n for n in layout.elements() if n.sequence and n.tag != PIXEL_DATA]


def _header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes:
    if implicit or vr is None:
        return pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    if vr in LONG_VRS:
        return pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    return pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    return _header(tag, vr, len(value), implicit) + value


def _with_length(layout: Layout, node: Node, length: int) -> bytes | None:
    if node.len_size == 2 and length > 0xFFFF:
        return None
    data = bytearray(layout.data)
    data[node.len_pos:node.len_pos + node.len_size] = length.to_bytes(node.len_size, "little")
    return bytes(data)


def _top_position(layout: Layout, tag: int) -> tuple[int, int]:
    """Where a top-level element with `tag` goes: (start, end) of the one it replaces, else an empty gap."""
    for node in layout.elements():
        if node.depth == 0 and node.tag >= tag and node.pos >= layout.body:
            return (node.pos, node.end) if node.tag == tag else (node.pos, node.pos)
    return len(layout.data), len(layout.data)


def _swallow(layout: Layout, rng: random.Random, nodes: list[Node]) -> bytes | None:
    node = _pick(layout, rng, [n for n in nodes if layout.siblings_after(n)])
    if node is None:
        return None
    following = layout.siblings_after(node)[:rng.randint(1, 3)]
    return _with_length(layout, node, node.length + sum(n.end - n.pos for n in following))


@kind("swallow-next")
def swallow_next(layout: Layout, rng: random.Random) -> bytes | None:
    """A value's length grown to take in exactly the next one to three elements."""
    return _swallow(layout, rng, _transparent(_values(layout)))


@kind("ds-swallow")
def ds_swallow(layout: Layout, rng: random.Random) -> bytes | None:
    """A decimal string consistently enlarged over what follows it."""
    return _swallow(layout, rng, [n for n in _values(layout) if (n.vr or n.dict_vr) == "DS"])


@kind("length-past-item")
def length_past_item(layout: Layout, rng: random.Random) -> bytes | None:
    """A nested element whose length runs past the end of its item."""
    node = _pick(layout, rng, [n for n in _transparent(_values(layout)) if n.depth > 0])
    if node is None:
        return None
    item = layout.nodes[node.parents[-1]]
    return _with_length(layout, node, node.length + item.end - node.end + rng.choice((0, 1, 2, 8, 12, 40)))


@kind("length-shrink")
def length_shrink(layout: Layout, rng: random.Random) -> bytes | None:
    """A value's length cut short, so its tail is read as element headers."""
    node = _pick(layout, rng, [n for n in _values(layout) if n.length >= 2])
    return None if node is None else _with_length(layout, node, rng.randrange(node.length))


def _undefined(layout: Layout, rng: random.Random, length: int) -> bytes | None:
    node = _pick(layout, rng, _values(layout))
    if node is None:
        return None
    if node.len_size == 4:
        return _with_length(layout, node, length)
    vr = rng.choice(("UN", "UT", "OB"))  # a short VR cannot hold it: written as a long VR would be
    return layout.splice(node, node.pos, node.start, _header(node.tag, vr, length, False))


@kind("length-ffffffff")
def length_ffffffff(layout: Layout, rng: random.Random) -> bytes | None:
    """Undefined length on an element that is not a sequence."""
    return _undefined(layout, rng, UNDEFINED)


@kind("length-fffffffe")
def length_fffffffe(layout: Layout, rng: random.Random) -> bytes | None:
    """The largest defined length on an element that is not a sequence."""
    return _undefined(layout, rng, 0xFFFFFFFE)


def _explicit(layout: Layout) -> list[Node]:
    return [] if layout.implicit else [n for n in layout.elements() if n.pos >= layout.body]


def _overwrite_vr(layout: Layout, node: Node, vr: bytes) -> bytes:
    data = bytearray(layout.data)
    data[node.pos + 4:node.pos + 6] = vr
    return bytes(data)


@kind("vr-zero")
def vr_zero(layout: Layout, rng: random.Random) -> bytes | None:
    """VR bytes zeroed."""
    node = _pick(layout, rng, _explicit(layout))
    return None if node is None else _overwrite_vr(layout, node, b"\0\0")


@kind("vr-flip")
def vr_flip(layout: Layout, rng: random.Random) -> bytes | None:
    """VR bytes overwritten (SH by OV, UN by UR, ... or any valid or invalid pair); the layout stays."""
    node = _pick(layout, rng, _explicit(layout))
    if node is None:
        return None
    roll = rng.random()
    if node.vr in FLIPS and roll < 0.5:
        vr = FLIPS[node.vr].encode()
    else:
        vr = rng.choice(VRS).encode() if roll < 0.8 else rng.choice(INVALID_VRS)
    return _overwrite_vr(layout, node, vr)


@kind("vr-recode")
def vr_recode(layout: Layout, rng: random.Random) -> bytes | None:
    """A value re-encoded under another VR, header laid out for that VR, value bytes unchanged."""
    node = _pick(layout, rng, [n for n in _explicit(layout) if not n.sequence])
    if node is None:
        return None
    vr = rng.choice([v for v in VRS if v != node.vr])
    if vr in SHORT_VRS and node.length > 0xFFFF:
        return None
    return layout.splice(node, node.pos, node.start, _header(node.tag, vr, node.length, False))


def _sequence_as(layout: Layout, node: Node, vr: str) -> bytes:
    """The sequence's items as they are, under `vr` with a defined length (no sequence delimiter)."""
    value = layout.data[node.start:node.end - 8 if node.length == UNDEFINED else node.end]
    if vr in SHORT_VRS and len(value) > 0xFFFF:
        vr = "UT"
    return layout.splice(node, node.pos, node.end, _header(node.tag, vr, len(value), False) + value)


@kind("sq-as-un")
def sq_as_un(layout: Layout, rng: random.Random) -> bytes | None:
    """A sequence stored as UN with a defined length, its items still in explicit VR."""
    node = _pick(layout, rng, [n for n in _sequences(layout) if n.vr == "SQ"])
    return None if node is None else _sequence_as(layout, node, "UN")


@kind("sq-as-text")
def sq_as_text(layout: Layout, rng: random.Random) -> bytes | None:
    """A public sequence stored under a text or binary VR with a defined length."""
    nodes = [n for n in _sequences(layout) if n.vr == "SQ"]
    public = [n for n in nodes if n.tag in PUBLIC_SEQUENCES]
    node = rng.choice(public) if public and rng.random() < 0.5 else _pick(layout, rng, nodes)
    return None if node is None else _sequence_as(layout, node, rng.choice(TEXT_OR_BINARY))


@kind("truncate")
def truncate(layout: Layout, rng: random.Random) -> bytes | None:
    """The file cut at a random offset of its body."""
    return layout.data[:rng.randrange(layout.body, len(layout.data))]


@kind("truncate-header")
def truncate_header(layout: Layout, rng: random.Random) -> bytes | None:
    """The file cut inside an element's header, most often a long-VR one."""
    nodes = [n for n in layout.nodes if n.pos >= layout.body]
    long = [n for n in nodes if n.header_size == 12]
    node = _pick(layout, rng, long if long and rng.random() < 0.7 else nodes)
    return None if node is None else layout.data[:node.pos + rng.randrange(1, node.header_size)]


def _nest(depth: int, inner: bytes, implicit: bool, defined: bool) -> bytes:
    """`inner` as the only item of a Referenced Series Sequence, `depth` times over."""
    value = inner
    for _ in range(depth):
        if defined:
            item = pack("<HHI", 0xFFFE, 0xE000, len(value)) + value
            value = _header(REFERENCED_SERIES, "SQ", len(item), implicit) + item
        else:
            item = pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + value + pack("<HHI", 0xFFFE, 0xE00D, 0)
            value = (_header(REFERENCED_SERIES, "SQ", UNDEFINED, implicit) + item
                     + pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return value


@kind("deep-nesting")
def deep_nesting(layout: Layout, rng: random.Random) -> bytes | None:
    """Planted values at the bottom of sequences nested around the engine's depth limit and far past it."""
    depth = rng.choice((8, 40, 63, 64, 65, 66, 120, 400))
    inner = (_element(REFERENCED_SOP, "UI", NESTED_REF_SOP.encode(), layout.implicit)
             + _element(PATIENT_NAME, "PN", NAME.encode(), layout.implicit))
    start, end = _top_position(layout, REFERENCED_SERIES)
    data = layout.data
    return data[:start] + _nest(depth, inner, layout.implicit, rng.random() < 0.5) + data[end:]


def _delimiters(layout: Layout) -> list[Node]:
    return [n for n in layout.nodes if n.tag in (ITEM_END, SEQUENCE_END)]


@kind("delimiter-drop")
def delimiter_drop(layout: Layout, rng: random.Random) -> bytes | None:
    """An item or sequence delimiter removed."""
    node = _pick(layout, rng, _delimiters(layout))
    return None if node is None else layout.splice(node, node.pos, node.end, b"")


@kind("delimiter-dup")
def delimiter_dup(layout: Layout, rng: random.Random) -> bytes | None:
    """A delimiter written twice, or a stray one between two elements."""
    if rng.random() < 0.5:
        node = _pick(layout, rng, _delimiters(layout))
        if node is None:
            return None
        return layout.splice(node, node.end, node.end, layout.data[node.pos:node.end])
    node = _pick(layout, rng, [n for n in layout.elements() if n.pos >= layout.body])
    if node is None:
        return None
    marker = pack("<HHI", 0xFFFE, rng.choice((0xE00D, 0xE0DD, 0xE000)), 0)
    return layout.splice(node, node.end, node.end, marker)


@kind("tag-swap")
def tag_swap(layout: Layout, rng: random.Random) -> bytes | None:
    """Two neighbouring elements written in the wrong order."""
    nodes = [n for n in layout.elements() if n.pos >= layout.body and layout.siblings_after(n)]
    node = _pick(layout, rng, nodes)
    if node is None:
        return None
    after = layout.siblings_after(node)[0]
    data = layout.data
    return data[:node.pos] + data[after.pos:after.end] + data[node.pos:node.end] + data[after.end:]


@kind("charset")
def charset(layout: Layout, rng: random.Random) -> bytes | None:
    """Specific Character Set replaced by a NUL-padded, unknown or ISO 2022 value; names with escapes."""
    data = layout.data
    if rng.random() < 0.4:
        name = next((n for n in layout.elements() if n.depth == 0 and n.tag == PATIENT_NAME), None)
        if name is not None:
            escaped = _element(PATIENT_NAME, "PN", ESCAPED_NAME, layout.implicit)
            data = data[:name.pos] + escaped + data[name.end:]
    start, end = _top_position(layout, CHARSET)
    return data[:start] + _element(CHARSET, "CS", rng.choice(CHARSETS), layout.implicit) + data[end:]


@kind("header-flip")
def header_flip(layout: Layout, rng: random.Random) -> bytes | None:
    """Random bits flipped in the VR and length bytes of one to three headers."""
    nodes = _transparent([n for n in layout.nodes if n.pos >= layout.body])
    data = bytearray(layout.data)
    for _ in range(rng.randint(1, 3)):
        node = _pick(layout, rng, nodes)
        data[node.pos + rng.randrange(4, node.header_size)] ^= 1 << rng.randrange(8)
    return bytes(data)


@kind("dense")
def dense(layout: Layout, rng: random.Random) -> bytes | None:
    """Thousands of tiny elements: private blocks, or a sequence of many items holding planted UIDs."""
    count = rng.choice((100, 500, 2000))
    implicit = layout.implicit
    if rng.random() < 0.5:
        blocks = (count + 255) // 256
        creators = b"".join(_element(0x00290010 + b, "LO", b"ZQX DENSE", implicit) for b in range(blocks))
        values = b"".join(_element(0x00290000 | (0x10 + i // 256) << 8 | i % 256, "SH", b"A", implicit)
                          for i in range(count))
        start, end = _top_position(layout, 0x00290010)
        return layout.data[:start] + creators + values + layout.data[end:]
    item = _element(REFERENCED_SOP, "UI", REF_SOP.encode(), implicit)
    items = (pack("<HHI", 0xFFFE, 0xE000, len(item)) + item) * count
    start, end = _top_position(layout, REFERENCED_SERIES)
    sequence = _header(REFERENCED_SERIES, "SQ", len(items), implicit) + items
    return layout.data[:start] + sequence + layout.data[end:]
