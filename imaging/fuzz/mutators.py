"""Byte-level DICOM mutators: each takes ``(data, rng)`` and returns damaged bytes.

Offsets are biased towards the header (the pixel bytes are most of a file but matter least), and the
structural mutators aim at real elements found by :func:`~imaging.fuzz.elements.walk_elements`.
"""

from __future__ import annotations

import functools
import random
import struct
import zlib
from collections.abc import Callable

from .corpus import seed_corpus
from .elements import (
    DEFLATED,
    UNDEFINED,
    Element,
    insert_before,
    layout,
    replace_value,
    set_length,
    set_transfer_syntax,
    walk_elements,
)

#: transfer syntaxes written by ``wrong_transfer_syntax``, garbage included
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 (no decoder)
    "1.2.3.4.5.6.7.8.9",  # a UID, but no transfer syntax
    "",
    "not a uid",
)
#: Image Pixel attributes that ``huge_dimensions`` rewrites (all US except NumberOfFrames, IS)
ROWS, COLUMNS, FRAMES = 0x00280010, 0x00280011, 0x00280008
SIZE_TAGS = (ROWS, COLUMNS, FRAMES, 0x00280100, 0x00280101, 0x00280002)
HUGE_US = (0, 1, 0x7FFF, 0x8000, 0xFFFF)
HUGE_IS = ("999999", "0", "-1", "65536", "2147483648", "1e9", "")
INTERESTING_BYTES = (0x00, 0xFF, 0x7F, 0x80)
MAX_BIT_FLIPS = 8
DEFAULT_MAX_OPS = 3


def _offset(data: bytes, rng: random.Random) -> int:
    """A random offset, biased towards the header (pixel bytes are most of a file, matter least)."""
    _, pixels_start = layout(data)
    if pixels_start > 0 and rng.random() < 0.7:
        return rng.randrange(pixels_start)
    return rng.randrange(len(data))


def bit_flip(data: bytes, rng: random.Random) -> bytes:
    """Flip 1..``MAX_BIT_FLIPS`` random bits."""
    out = bytearray(data)
    for _ in range(rng.randint(1, MAX_BIT_FLIPS)):
        out[_offset(data, rng)] ^= 1 << rng.randrange(8)
    return bytes(out)


def interesting_bytes(data: bytes, rng: random.Random) -> bytes:
    """Overwrite 1, 2 or 4 adjacent bytes with 0x00, 0xFF, 0x7F or 0x80, 1..4 times."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at, width = _offset(data, rng), rng.choice((1, 2, 4))
        out[at : at + width] = bytes([rng.choice(INTERESTING_BYTES)]) * len(out[at : at + width])
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    """Cut the file: inside the meta, the dataset header, the pixel data, or anywhere."""
    meta_end, pixels_start = layout(data)
    lo, hi = rng.choice(((0, meta_end), (meta_end, pixels_start), (pixels_start, len(data))))
    return data[: rng.randrange(lo, hi) if hi > lo else rng.randrange(len(data))]


def corrupt_length(data: bytes, rng: random.Random) -> bytes:
    """Set one element's 16/32-bit length to 0, an odd value, the maximum or past the end."""
    elements = walk_elements(data)
    if not elements:
        return data
    el = rng.choice(elements)
    top = 0xFFFF if el.length_size == 2 else UNDEFINED
    past_end = min(top, len(data) - el.value_offset + rng.randint(1, 4096))
    choices = [0, el.length | 1 if el.length != UNDEFINED else 1, top, past_end]
    return set_length(data, el, rng.choice([c for c in choices if c != el.length] or [0]))


def huge_dimensions(data: bytes, rng: random.Random) -> bytes:
    """Rewrite Rows/Columns/NumberOfFrames/BitsAllocated/BitsStored/SamplesPerPixel to extremes."""
    top = {e.tag: e for e in walk_elements(data) if e.depth == 0 and e.tag in SIZE_TAGS}
    if rng.random() < 0.3 and ROWS in top and COLUMNS in top:  # Rows = Columns = 65535
        for tag in (COLUMNS, ROWS):  # later element first: the earlier offset stays valid
            data = _set_us(data, top[tag], 0xFFFF)
        return data
    tag = rng.choice(SIZE_TAGS)
    if tag == FRAMES:
        value = rng.choice((*HUGE_IS, str(rng.randint(2, 10**6)))).encode()
        value += b" " * (len(value) % 2)
        if FRAMES in top:
            return replace_value(data, top[FRAMES], value)
        if ROWS not in top:
            return data
        return insert_before(data, top[ROWS], FRAMES, "IS", value)
    if tag not in top or top[tag].length != 2:
        return data
    return _set_us(data, top[tag], rng.choice((*HUGE_US, rng.randrange(0x10000))))


def _set_us(data: bytes, el: Element, value: int) -> bytes:
    return replace_value(data, el, struct.pack(">H" if el.big_endian else "<H", value))


def wrong_transfer_syntax(data: bytes, rng: random.Random) -> bytes:
    """Rewrite (0002,0010) to another (or a garbage) UID, group length kept consistent or not."""
    return set_transfer_syntax(
        data, rng.choice(TRANSFER_SYNTAXES), fix_group_length=rng.random() < 0.5
    )


def deflated(data: bytes, padding: int = 0) -> bytes:
    """``data`` re-encoded as Deflated Explicit VR Little Endian (PS3.5 A.5).

    ``padding`` zero bytes are appended in a Data Set Trailing Padding (FFFC,FFFC) element first:
    a deflate bomb when large, since each MiB of zeros deflates to about 1 kB (independent
    sync-flushed segments concatenate into one valid stream, so it is built without inflating).
    """
    meta_end, _ = layout(data)
    if meta_end == 0:  # no file meta to carry the transfer syntax
        return data
    body = data[meta_end:]
    if padding:
        body += struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, padding)
    segments = [_deflate_segment(body)]
    mib, rest = divmod(padding, 1 << 20)
    segments += [_deflate_segment(bytes(1 << 20))] * mib + [_deflate_segment(bytes(rest))]
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # last, empty block
    return set_transfer_syntax(data[:meta_end], DEFLATED) + b"".join(segments) + final


@functools.lru_cache(maxsize=4)
def _deflate_segment(raw: bytes) -> bytes:
    """Raw deflate blocks of ``raw``, none final, ending on a byte boundary."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(raw) + deflater.flush(zlib.Z_SYNC_FLUSH)


def deflate_dataset(data: bytes, rng: random.Random) -> bytes:
    """Re-encode the dataset as deflated: later mutators then damage the compressed stream."""
    return deflated(data)


def _chunk(data: bytes, rng: random.Random) -> tuple[int, int]:
    """A ``(start, stop)`` span: a whole element (header and value) or random bytes."""
    elements = [e for e in walk_elements(data) if e.length != UNDEFINED and e.end <= len(data)]
    if elements and rng.random() < 0.5:
        el = rng.choice(elements)
        return el.offset, el.end
    start = _offset(data, rng)
    return start, min(len(data), start + rng.randint(1, 1024))


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    """Repeat a chunk, right after itself or at a random offset."""
    start, stop = _chunk(data, rng)
    at = stop if rng.random() < 0.5 else rng.randrange(len(data) + 1)
    return data[:at] + data[start:stop] + data[at:]


def remove_chunk(data: bytes, rng: random.Random) -> bytes:
    """Delete a chunk (a whole element or random bytes)."""
    start, stop = _chunk(data, rng)
    return data[:start] + data[stop:]


def splice(data: bytes, rng: random.Random) -> bytes:
    """The head of ``data`` joined to the tail of another seed file, cut at elements or anywhere."""
    other = rng.choice(seed_corpus())[1]
    return data[: _cut(data, rng)] + other[_cut(other, rng) :]


def _cut(data: bytes, rng: random.Random) -> int:
    elements = walk_elements(data)
    if elements and rng.random() < 0.5:
        return rng.choice(elements).offset
    return rng.randrange(len(data) + 1)


MUTATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit_flip": bit_flip,
    "interesting_bytes": interesting_bytes,
    "truncate": truncate,
    "corrupt_length": corrupt_length,
    "huge_dimensions": huge_dimensions,
    "wrong_transfer_syntax": wrong_transfer_syntax,
    "duplicate_chunk": duplicate_chunk,
    "remove_chunk": remove_chunk,
    "splice": splice,
    "deflate_dataset": deflate_dataset,
}


def mutate(data: bytes, rng: random.Random, n_ops: int = 1) -> tuple[bytes, list[str]]:
    """Apply ``n_ops`` random mutators in turn; returns the bytes and the mutators that acted.

    A mutator that finds nothing to change (e.g. no Rows element) is replaced by another draw.
    """
    names = sorted(MUTATORS)
    used: list[str] = []
    for _ in range(n_ops):
        for _attempt in range(8):
            name = rng.choice(names)
            out = MUTATORS[name](data, rng) if data else data
            if out != data:
                data = out
                used.append(name)
                break
    return data, used
