"""A light walker over the element headers of Part-10 DICOM bytes, and edits that keep it valid.

It reads explicit/implicit VR little endian and explicit VR big endian datasets (file meta always
explicit little endian) without pydicom, so that the mutators can find and damage one length field,
one attribute value or the transfer syntax exactly, and nothing else.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
GROUP_LENGTH = 0x00020000
#: explicit-VR VRs whose header has 2 reserved bytes and a 32-bit length
LONG_VRS = frozenset(vr.encode() for vr in "OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
IMPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class Element:
    """One data element header found in the bytes (items and delimiters included)."""

    tag: int  # (group << 16) | element
    vr: str  # "" for items/delimiters; the dictionary VR (or "UN") in implicit VR
    offset: int  # first byte of the header
    length_offset: int  # first byte of the length field
    length_size: int  # 2 or 4 bytes
    length: int  # declared value length, UNDEFINED for undefined length
    value_offset: int
    depth: int  # 0 at the top level of the dataset (or file meta)
    big_endian: bool

    @property
    def end(self) -> int:
        """Offset just past the value (the value offset itself for undefined lengths)."""
        return self.value_offset + (0 if self.length == UNDEFINED else self.length)


def walk_elements(data: bytes, limit: int = 20000) -> list[Element]:
    """Element headers of a Part-10 (or meta-less) little/big-endian file, in file order.

    A light walker, tolerant of damage: it stops at the first header that cannot be parsed.
    Deflated datasets are not inflated (only their file meta is walked).
    """
    return list(_walk_cached(bytes(data), limit))


@functools.lru_cache(maxsize=16)  # a chain of mutators walks the same bytes several times
def _walk_cached(data: bytes, limit: int) -> tuple[Element, ...]:
    out: list[Element] = []
    pos, explicit, big = 0, _looks_explicit(data, 0), False
    if data[128:132] == b"DICM":
        pos = _walk(data, 132, out, explicit=True, big=False, limit=limit, meta=True)
        uid = next((_value(data, e) for e in out if e.tag == TRANSFER_SYNTAX), b"")
        uid = uid.rstrip(b"\0 ").decode("ascii", "replace")
        if uid == DEFLATED:
            return tuple(out)
        # The first header tells explicit from implicit VR even where the UID is wrong or damaged.
        explicit, big = _looks_explicit(data, pos), uid == EXPLICIT_BE
    _walk(data, pos, out, explicit=explicit, big=big, limit=limit, meta=False)
    return tuple(out)


def _looks_explicit(data: bytes, pos: int) -> bool:
    vr = data[pos + 4 : pos + 6]
    return len(vr) == 2 and vr.isalpha() and vr.isupper()


def _value(data: bytes, el: Element) -> bytes:
    return data[el.value_offset : el.end]


def _walk(data, pos, out, *, explicit, big, limit, meta) -> int:
    """Append the headers from ``pos`` on to ``out``; returns where the walk stopped."""
    e = ">" if big else "<"
    stack: list[int | None] = []  # end offset of each open container (None: undefined length)
    in_pixels = False
    while pos + 8 <= len(data) and len(out) < limit:
        while stack and stack[-1] is not None and pos >= stack[-1]:
            stack.pop()
        group, elem = struct.unpack_from(e + "HH", data, pos)
        if meta and group != 0x0002:
            break
        tag = group << 16 | elem
        if group == 0xFFFE:  # item or delimiter: no VR, 32-bit length
            (length,) = struct.unpack_from(e + "I", data, pos + 4)
            out.append(Element(tag, "", pos, pos + 4, 4, length, pos + 8, len(stack), big))
            pos += 8
            if elem == 0xE000 and in_pixels:
                if length == UNDEFINED:
                    break
                pos += length  # a fragment: bytes, not elements
            elif elem == 0xE000:
                stack.append(None if length == UNDEFINED else pos + length)
            elif elem in (0xE00D, 0xE0DD) and stack:
                stack.pop()
                in_pixels = in_pixels and elem != 0xE0DD
            continue
        if explicit:
            vr = data[pos + 4 : pos + 6]
            if not (vr.isalpha() and vr.isupper()):
                break
            if vr in LONG_VRS:
                if pos + 12 > len(data):
                    break
                lo, size = pos + 8, 4
            else:
                lo, size = pos + 6, 2
            vr = vr.decode()
        else:
            vr, lo, size = _dictionary_vr(tag), pos + 4, 4
        (length,) = struct.unpack_from(e + ("H" if size == 2 else "I"), data, lo)
        out.append(Element(tag, vr, pos, lo, size, length, lo + size, len(stack), big))
        pos = lo + size
        if length == UNDEFINED:
            in_pixels = in_pixels or tag == PIXEL_DATA
            stack.append(None)
        elif vr == "SQ":
            stack.append(pos + length)
        else:
            pos += length
    return pos


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def layout(data: bytes) -> tuple[int, int]:
    """``(meta_end, pixels_start)``: where the file meta ends and the pixel data value starts."""
    elements = walk_elements(data)
    meta = [e for e in elements if e.tag >> 16 == 0x0002 and e.depth == 0]
    meta_end = meta[-1].end if meta else 0
    pixels = next((e for e in elements if e.tag == PIXEL_DATA), None)
    return min(meta_end, len(data)), min(pixels.value_offset if pixels else len(data), len(data))


def set_length(data: bytes, el: Element, length: int) -> bytes:
    """``data`` with ``el``'s length field set to ``length`` (nothing else moves)."""
    out = bytearray(data)
    fmt = (">" if el.big_endian else "<") + ("H" if el.length_size == 2 else "I")
    struct.pack_into(fmt, out, el.length_offset, length)
    return bytes(out)


def replace_value(data: bytes, el: Element, value: bytes) -> bytes:
    """``data`` with ``el``'s value replaced by ``value`` and its length field updated."""
    head = set_length(data[: el.value_offset], el, len(value))
    return head + value + data[el.end :]


def insert_before(data: bytes, el: Element, tag: int, vr: str, value: bytes) -> bytes:
    """Insert a new short-VR element just before ``el``, in ``el``'s encoding."""
    e = ">" if el.big_endian else "<"
    head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if el.length_size == 2:  # explicit VR, like its neighbour
        head += vr.encode() + struct.pack(e + "H", len(value))
    else:
        head += struct.pack(e + "I", len(value))
    return data[: el.offset] + head + value + data[el.offset :]


def set_transfer_syntax(data: bytes, uid: str, *, fix_group_length: bool = True) -> bytes:
    """Rewrite (0002,0010); keep (0002,0000) FileMetaInformationGroupLength consistent or not."""
    elements = walk_elements(data)
    ts = next((e for e in elements if e.tag == TRANSFER_SYNTAX), None)
    if ts is None:
        return data
    value = uid.encode("ascii") + (b"\0" if len(uid) % 2 else b"")
    out = replace_value(data, ts, value)
    group = next((e for e in elements if e.tag == GROUP_LENGTH and e.length == 4), None)
    if fix_group_length and group is not None and group.offset < ts.offset:
        (old,) = struct.unpack_from("<I", out, group.value_offset)
        out = bytearray(out)
        struct.pack_into("<I", out, group.value_offset, (old + len(value) - ts.length) & UNDEFINED)
        out = bytes(out)
    return out
