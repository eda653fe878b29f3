"""Mutation fuzzing of the imaging layer on real DICOM files (issue 10, item 2), CI-sized.

Three seeded campaigns (``read_image``, ``read_series``, ``radiograph_to_unit`` after a read) must
give only images or typed errors, within time and memory bounds and without a patient identifier
in any message; then unit tests of the mutators and of the campaign runner, and regressions for the
bugs the campaigns found. The long run is ``python -m bench.fuzz``.
"""

from __future__ import annotations

import functools
import io
import os
import random
import struct
import time

import numpy as np
import pydicom
import pytest

from imaging import fuzz
from imaging.dicom import read_image
from imaging.errors import CorruptFileError, NoPixelDataError
from imaging.fuzz import mutators as mut
from imaging.fuzz.targets import TARGETS

#: fixed, so CI is repeatable; the case counts below take about 60 s in all on the 2-core machine
SEED = 20261125
TIME_LIMIT_S = 5.0


# ---------------------------------------------------------------------------------- campaigns


@pytest.mark.parametrize(
    ("name", "cases", "seed"),
    [
        ("read_image", 2000, SEED),
        ("read_series", 250, SEED),
        ("radiograph_to_unit", 600, SEED + 1),
    ],
)
def test_campaign_gives_result_or_typed_error(name, cases, seed):
    """Each target (imaging.fuzz.targets) also checks its result and that no message carries
    a patient identifier of the corpus."""
    target, make = TARGETS[name]
    report = fuzz.run_campaign(target, cases, seed, make=make, time_limit_s=TIME_LIMIT_S)
    shown = "\n".join(str(f) for f in report.failures[:5])
    assert not report.failures, f"{len(report.failures)} failures, e.g.:\n{shown}"
    # a campaign that never decodes, or never fails, exercises nothing
    assert report.outcomes["ok"] > 0 and report.outcomes["typed"] > 0, report.outcomes
    assert set(report.by_mutator) >= set(fuzz.MUTATORS)


# ------------------------------------------------------------------------------------ walker


@pytest.mark.parametrize("name", [n for n, _ in fuzz.seed_corpus() if n != "image_dfl.dcm"])
def test_walker_finds_the_elements_pydicom_reads(name):
    data = dict(fuzz.seed_corpus())[name]
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    top = [e.tag for e in fuzz.walk_elements(data) if e.depth == 0]
    meta = [int(t) for t in getattr(ds, "file_meta", {}).keys()]
    assert top == meta + [int(t) for t in ds.keys()]


@pytest.mark.parametrize(
    ("name", "header", "written"),
    [  # Rows (0028,0010), US, by hand: its header, then its length field once set to 0x0102
        ("CT_small.dcm", b"\x28\x00\x10\x00US\x02\x00", b"\x02\x01"),
        ("MR_small_bigendian.dcm", b"\x00\x28\x00\x10US\x00\x02", b"\x01\x02"),
        ("MR_small_implicit.dcm", b"\x28\x00\x10\x00\x02\x00\x00\x00", b"\x02\x01\x00\x00"),
    ],
)
def test_set_length_rewrites_the_length_field_it_claims(name, header, written):
    data = dict(fuzz.seed_corpus())[name]
    at = data.index(header)
    rows = next(e for e in fuzz.walk_elements(data) if e.tag == 0x00280010)
    assert (rows.offset, rows.length, rows.value_offset) == (at, 2, at + len(header))
    out = fuzz.set_length(data, rows, 0x0102)
    assert out[at + len(header) - len(written) : at + len(header)] == written
    changed = {i for i, (a, b) in enumerate(zip(data, out, strict=True)) if a != b}
    assert changed and changed <= set(range(rows.length_offset, rows.value_offset))


def test_corrupt_length_changes_exactly_one_length_field():
    for k in range(60):
        name, data = fuzz.seed_corpus()[k % len(fuzz.seed_corpus())]
        out = mut.corrupt_length(data, random.Random(k))
        changed = [i for i in range(len(data)) if out[i] != data[i]]
        assert len(out) == len(data) and changed, name
        owners = [
            e
            for e in fuzz.walk_elements(data)
            if e.length_offset <= changed[0] and changed[-1] < e.length_offset + e.length_size
        ]
        assert len(owners) == 1, name
        el = owners[0]
        fmt = (">" if el.big_endian else "<") + ("H" if el.length_size == 2 else "I")
        assert struct.unpack_from(fmt, out, el.length_offset)[0] != el.length


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.3.4"])
@pytest.mark.parametrize("fix", [True, False])
def test_transfer_syntax_rewrite_is_what_pydicom_reads(uid, fix):
    data = dict(fuzz.seed_corpus())["CT_small.dcm"]
    before = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    after = pydicom.dcmread(
        io.BytesIO(fuzz.set_transfer_syntax(data, uid, fix_group_length=fix)),
        stop_before_pixels=True,
    ).file_meta
    assert after.TransferSyntaxUID == uid
    padded = (len(uid) + 1) // 2 * 2 - (len(before.TransferSyntaxUID) + 1) // 2 * 2
    group_length = before.FileMetaInformationGroupLength + (padded if fix else 0)
    assert after.FileMetaInformationGroupLength == group_length


def test_replace_value_sets_number_of_frames_and_keeps_the_rest():
    data = dict(fuzz.seed_corpus())["emri_small.dcm"]
    frames = next(e for e in fuzz.walk_elements(data) if e.tag == 0x00280008)
    out = fuzz.replace_value(data, frames, b"999999")
    before = pydicom.dcmread(io.BytesIO(data))
    after = pydicom.dcmread(io.BytesIO(out))
    assert after.NumberOfFrames == 999999 and after.PixelData == before.PixelData
    assert [e.tag for e in after] == [e.tag for e in before]


# ---------------------------------------------------------------------------------- mutators


def test_truncation_cuts_a_prefix_in_every_region():
    data = dict(fuzz.seed_corpus())["CT_small.dcm"]
    ds = pydicom.dcmread(io.BytesIO(data))
    # the meta ends FileMetaInformationGroupLength bytes after its own 12-byte element at 132;
    # PixelData is followed only by DataSetTrailingPadding (OB: a 12-byte header)
    meta_end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    pixels_start = len(data) - len(ds.PixelData) - 12 - len(ds.DataSetTrailingPadding)
    assert fuzz.layout(data) == (meta_end, pixels_start)
    cuts = []
    for k in range(200):
        out = mut.truncate(data, random.Random(k))
        assert len(out) < len(data) and data.startswith(out)
        cuts.append(len(out))
    assert min(cuts) < meta_end  # inside the preamble / file meta
    assert any(meta_end <= c < pixels_start for c in cuts)  # inside the dataset header
    assert max(cuts) >= pixels_start  # inside the pixel data


def test_bit_flips_and_interesting_bytes_keep_the_length():
    data = dict(fuzz.seed_corpus())["MR_small_RLE.dcm"]
    for k in range(100):
        flipped = mut.bit_flip(data, random.Random(k))
        distance = sum(bin(a ^ b).count("1") for a, b in zip(data, flipped, strict=True))
        assert distance <= mut.MAX_BIT_FLIPS  # fewer when one bit is drawn twice
        out = mut.interesting_bytes(data, random.Random(k))
        assert len(out) == len(data)
        assert {out[i] for i in range(len(data)) if out[i] != data[i]} <= {0x00, 0xFF, 0x7F, 0x80}


def _first_difference(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    return next((i for i, (x, y) in enumerate(zip(a[:n], b[:n], strict=True)) if x != y), n)


def test_chunks_are_duplicated_or_removed_whole():
    data = dict(fuzz.seed_corpus())["CT_small.dcm"]
    for k in range(50):
        # cutting len difference bytes at the first difference must give the other back
        out = mut.remove_chunk(data, random.Random(k))
        i, n = _first_difference(data, out), len(data) - len(out)
        assert n > 0 and out == data[:i] + data[i + n :]
        grown = mut.duplicate_chunk(data, random.Random(k))
        i, n = _first_difference(data, grown), len(grown) - len(data)
        assert n > 0 and data == grown[:i] + grown[i + n :]


def test_huge_dimensions_reach_the_parsed_attributes():
    seen = set()
    data = dict(fuzz.seed_corpus())["MR_small_RLE.dcm"]
    for k in range(80):
        ds = pydicom.dcmread(io.BytesIO(mut.huge_dimensions(data, random.Random(k))))
        seen |= {(kw, ds.get(kw)) for kw in ("Rows", "Columns", "NumberOfFrames")}
    assert ("Rows", 65535) in seen and ("Columns", 65535) in seen
    assert ("NumberOfFrames", 999999) in seen and ("Rows", 0) in seen


def test_splice_joins_a_head_to_a_corpus_tail():
    data = dict(fuzz.seed_corpus())["CT_small.dcm"]
    others = [b for _, b in fuzz.seed_corpus()]
    for k in range(30):
        out = mut.splice(data, random.Random(k))
        assert any(o.endswith(out[_first_difference(data, out) :]) for o in others)


def test_deflated_reencoding_keeps_the_pixels():
    data = dict(fuzz.seed_corpus())["CT_small.dcm"]
    out = mut.deflate_dataset(data, random.Random(0))
    meta = pydicom.dcmread(io.BytesIO(out), stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    np.testing.assert_array_equal(read_image(out).pixels, read_image(data).pixels)


def test_cases_are_reproducible_from_seed_and_iteration():
    for i in range(20):
        case = fuzz.make_case(7, i)
        assert fuzz.reproduce(7, i) == case.data and case.mutators
        assert fuzz.make_series_case(7, i).data == fuzz.make_series_case(7, i).data
    assert fuzz.make_case(7, 0).data != fuzz.make_case(8, 0).data


# --------------------------------------------------------------------------- campaign runner


def _tiny_case(seed: int, iteration: int) -> fuzz.Case:
    return fuzz.Case(seed, iteration, "tiny", ["none"], bytes([iteration % 4]))


def _misbehave(data: bytes):
    """0: ok, 1: typed error, 2: untyped error, 3: hang (hangs only at iteration 3)."""
    kind = data[0]
    if kind == 1:
        raise NoPixelDataError("no pixels")
    if kind == 2:
        raise KeyError("oops")
    if kind == 3:
        time.sleep(30)


def test_runner_classifies_and_survives_a_hang():
    report = fuzz.run_campaign(_misbehave, 5, 0, make=_tiny_case, time_limit_s=0.5)
    assert report.outcomes == {"ok": 2, "typed": 1, "failure": 2}
    assert report.codes == {"no_pixel_data": 1}
    kinds = {f.iteration: f.kind for f in report.failures}
    assert kinds == {2: "exception", 3: "timeout"}
    assert report.failures[0].error_type == "KeyError"


def _crash_or_hog(data: bytes):
    if data[0] == 1:
        os._exit(3)
    if data[0] == 2:
        return np.ones(48 << 20, dtype=np.uint8)  # 48 MiB for a 1-byte input


def test_runner_reports_crashes_and_memory_blowups():
    report = fuzz.run_campaign(
        _crash_or_hog, 4, 0, make=_tiny_case, memory_factor=1, memory_slack=16 << 20
    )
    kinds = {f.iteration: f.kind for f in report.failures}
    assert kinds == {1: "crash", 2: "memory"}
    assert report.outcomes["ok"] == 2


def _broken_make(seed: int, iteration: int) -> fuzz.Case:
    raise ValueError("a mutator bug")


def test_a_harness_bug_is_raised_not_counted_as_a_crash():
    with pytest.raises(RuntimeError, match="a mutator bug"):
        fuzz.run_campaign(read_image, 1, 0, make=_broken_make)


# ---------------------------------------------------------------------------------- regressions


def test_damaged_sop_class_never_echoes_neighbouring_identifiers():
    """Found by the campaigns (first at ``python -m bench.fuzz`` seed 0, iteration 320:
    693_J2KI.dcm, corrupt_length): a SOPClassUID whose length grew swallowed the following
    attributes, PatientID included, and the no_pixel_data message quoted it whole."""
    data = fuzz.phantom_series()[0]
    sop = next(e for e in fuzz.walk_elements(data) if e.tag == 0x00080016)
    with pytest.raises(NoPixelDataError) as info:
        read_image(fuzz.set_length(data, sop, 0xFFFF))
    assert fuzz.PHANTOM_PATIENT_ID not in str(info.value)
    assert "SOP class: invalid" in str(info.value)


def test_more_frames_than_fragments_is_refused_before_allocating():
    """Found by the campaigns (first at ``python -m bench.fuzz`` seed 0, iteration 1690:
    MR_small_jp2klossless.dcm, huge_dimensions): NumberOfFrames 65536 on a 6 kB JPEG 2000 file
    made pydicom allocate 512 MiB for the frames before failing to decode the second one."""
    data = dict(fuzz.seed_corpus())["MR_small_jp2klossless.dcm"]
    rows = next(e for e in fuzz.walk_elements(data) if e.tag == 0x00280010)
    out = fuzz.insert_before(data, rows, 0x00280008, "IS", b"65536 ")
    assert pydicom.dcmread(io.BytesIO(out)).NumberOfFrames == 65536
    report = fuzz.run_campaign(
        read_image, 1, 0, make=lambda s, i: fuzz.Case(s, i, "regression", ["frames"], out)
    )
    assert report.codes == {"corrupt_file": 1} and not report.failures
    with pytest.raises(CorruptFileError, match="fragments"):
        read_image(out)


def test_deflate_bomb_is_refused_without_inflating_it():
    """Found while adding the deflate_dataset mutator: pydicom inflates a deflated dataset whole
    and without a limit, so 330 kB of deflated zeros took 600 MiB; the gzip cap now applies."""
    bomb = mut.deflated(dict(fuzz.seed_corpus())["CT_small.dcm"], padding=300 << 20)
    assert len(bomb) < 400_000
    small = functools.partial(read_image, max_pixels=1 << 20)  # caps input at 28 MiB
    report = fuzz.run_campaign(
        small, 1, 0, make=lambda s, i: fuzz.Case(s, i, "regression", ["deflate bomb"], bomb)
    )
    assert report.codes == {"image_too_large": 1} and not report.failures
