"""Where every element, item and delimiter of a well-formed little-endian file sits, read from its bytes."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from struct import pack, unpack_from

from pydicom.datadict import dictionary_VR

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END, PIXEL_DATA = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0x7FE00010
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
SHORT_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH",
                       "SL", "SS", "ST", "TM", "UI", "UL", "US"})


@dataclass
class Node:
    """One element, item or delimiter: offsets into the file and the nodes that enclose it."""

    pos: int  # header start
    tag: int
    vr: str | None  # as written in the file; None for implicit VR, items and delimiters
    dict_vr: str  # the VR the data dictionary gives (UN when unknown)
    len_pos: int
    len_size: int  # 2 or 4
    length: int
    start: int  # value start
    end: int  # end of the whole encoding (after the sequence delimiter for undefined lengths)
    depth: int
    parents: tuple[int, ...]  # indexes of the enclosing sequences and items, outermost first
    sequence: bool = False

    @property
    def header_size(self) -> int:
        return self.start - self.pos

    @property
    def kind(self) -> str:
        return {ITEM: "item", ITEM_END: "item-end", SEQUENCE_END: "sequence-end"}.get(self.tag, "element")


class Layout:
    """The nodes of one file in file order, and the splice that keeps enclosing defined lengths right."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.nodes: list[Node] = []
        self._datasets: dict[tuple[int, ...], list[Node]] | None = None
        syntax = b""
        pos = 132
        while pos + 8 <= len(data) and unpack_from("<H", data, pos)[0] == 0x0002:
            node = self._element(pos, False, 0, ())
            if node.tag == 0x00020010:
                syntax = data[node.start:node.end].rstrip(b"\0 ")
            pos = node.end
        self.body = pos
        self.implicit = syntax == b"1.2.840.10008.1.2"
        self._dataset(pos, len(data), 0, ())

    def _dataset(self, pos: int, end: int | None, depth: int, parents: tuple[int, ...]) -> int:
        """Read elements to `end`, or to the item delimiter (included) when end is None."""
        while end is None or pos < end:
            tag = unpack_from("<HH", self.data, pos)
            if (tag[0] << 16 | tag[1]) == ITEM_END:
                return self._marker(pos, depth, parents).end
            pos = self._element(pos, self.implicit, depth, parents).end
        return pos

    def _marker(self, pos: int, depth: int, parents: tuple[int, ...]) -> Node:
        group, element, length = unpack_from("<HHI", self.data, pos)
        tag = group << 16 | element
        node = Node(pos, tag, None, "NONE", pos + 4, 4, length, pos + 8, pos + 8, depth, parents)
        self.nodes.append(node)
        return node

    def _element(self, pos: int, implicit: bool, depth: int, parents: tuple[int, ...]) -> Node:
        data = self.data
        group, element = unpack_from("<HH", data, pos)
        tag = group << 16 | element
        try:
            dict_vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            dict_vr = "UN"
        if implicit:
            vr, len_pos, len_size = None, pos + 4, 4
        else:
            vr = data[pos + 4:pos + 6].decode("latin-1")
            len_pos, len_size = (pos + 8, 4) if vr in LONG_VRS else (pos + 6, 2)
        length = unpack_from("<I" if len_size == 4 else "<H", data, len_pos)[0]
        start = len_pos + len_size
        node = Node(pos, tag, vr, dict_vr, len_pos, len_size, length, start, start + length, depth, parents)
        self.nodes.append(node)
        index = len(self.nodes) - 1
        if tag == PIXEL_DATA and length == UNDEFINED:
            node.end = self._items(start, None, depth, (*parents, index), fragments=True)
        elif vr == "SQ" or length == UNDEFINED or (vr is None and dict_vr == "SQ"):
            node.sequence = True
            node.end = self._items(start, None if length == UNDEFINED else start + length, depth,
                                   (*parents, index))
        return node

    def _items(self, pos: int, end: int | None, depth: int, parents: tuple[int, ...],
               fragments: bool = False) -> int:
        while end is None or pos < end:
            item = self._marker(pos, depth + 1, parents)
            if item.tag == SEQUENCE_END:
                return item.end
            index = len(self.nodes) - 1
            if fragments:
                item.end = pos = item.start + item.length
            elif item.length == UNDEFINED:
                item.end = pos = self._dataset(item.start, None, depth + 1, (*parents, index))
            else:
                item.end = pos = self._dataset(item.start, item.start + item.length, depth + 1,
                                               (*parents, index))
        return pos

    def elements(self) -> list[Node]:
        """Nodes that are data elements (not items or delimiters)."""
        return [n for n in self.nodes if n.kind == "element"]

    def siblings_after(self, node: Node) -> list[Node]:
        """The elements after `node` in the same dataset, in order."""
        if self._datasets is None:
            self._datasets = {}
            for n in self.elements():
                self._datasets.setdefault(n.parents, []).append(n)
        siblings = self._datasets.get(node.parents, [])
        return siblings[bisect_left([n.pos for n in siblings], node.end):]

    def splice(self, node: Node, start: int, end: int, new: bytes, data: bytes | None = None) -> bytes:
        """Replace data[start:end] with `new`, growing or shrinking every enclosing defined length alike."""
        data = bytearray(self.data if data is None else data)
        delta = len(new) - (end - start)
        for index in node.parents:
            parent = self.nodes[index]
            if parent.length != UNDEFINED and parent.len_size == 4:
                data[parent.len_pos:parent.len_pos + 4] = pack("<I", (parent.length + delta) & 0xFFFFFFFF)
            elif parent.length != UNDEFINED:
                data[parent.len_pos:parent.len_pos + 2] = pack("<H", (parent.length + delta) & 0xFFFF)
        data[start:end] = new
        return bytes(data)
