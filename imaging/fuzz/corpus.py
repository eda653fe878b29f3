"""The seed corpus: small real files from pydicom / pydicom-data, and phantom CR and CT files."""

from __future__ import annotations

import functools
import io

from .elements import layout

#: real files from pydicom / pydicom-data (each < 600 kB): one per encoding family and then some
SEED_FILES = (
    "CT_small.dcm",  # explicit VR little endian, CT
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "MR_small_RLE.dcm",  # RLE lossless
    "rtdose_rle.dcm",  # RLE, 15 frames
    "SC_rgb_rle_16bit_2frame.dcm",  # RLE, RGB, 2 frames
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "JPGExtended.dcm",  # JPEG extended, 12 bit
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless (process 14)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "693_J2KI.dcm",  # JPEG 2000 lossy, 512² CT
    "emri_small.dcm",  # 10 frames, uncompressed
    "emri_small_jpeg_2k_lossless.dcm",  # 10 frames, JPEG 2000
    "liver.dcm",  # enhanced multi-frame, functional groups
    "mlut_18.dcm",  # Modality LUT Sequence
    "examples_palette.dcm",  # PALETTE COLOR
    "SC_rgb_small_odd.dcm",  # 3×3 RGB, odd lengths
)
#: identifiers written into the phantom files: they must never show up in an error message
PHANTOM_PATIENT_ID = "FUZZ-PATIENT-4711"
PHANTOM_STUDY_UID = "1.2.826.0.1.3680043.8.498.4711.1"
PHANTOM_SERIES_UIDS = ("1.2.826.0.1.3680043.8.498.4711.2", "1.2.826.0.1.3680043.8.498.4711.3")


@functools.lru_cache(maxsize=1)
def _seed_corpus() -> tuple[tuple[str, bytes], ...]:
    from pydicom.data import get_testdata_file

    files = []
    for name in SEED_FILES:
        path = get_testdata_file(name)
        if path is not None:
            with open(path, "rb") as f:
                files.append((name, f.read()))
    implicit = dict(files).get("MR_small_implicit.dcm")
    if implicit is not None:  # legacy: a bare dataset without preamble or file meta
        files.append(("MR_small_implicit.dcm[no meta]", implicit[layout(implicit)[0] :]))
    files.append(("phantom_cr.dcm", _phantom_cr()))
    files.append(("phantom_ct_slice.dcm", phantom_series()[len(phantom_series()) // 2]))
    return tuple(files)


def seed_corpus() -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the seed files: the real ``SEED_FILES``, a phantom CR and CT slice.

    Deterministic (fixed UIDs and dates), so a case is reproducible from its seed and iteration.
    """
    return list(_seed_corpus())


@functools.lru_cache(maxsize=1)
def _phantom_ct():
    from ..phantoms import make_chest_ct

    return make_chest_ct(0, shape=(16, 32, 32), spacing=(10.0, 10.0, 10.0))


@functools.lru_cache(maxsize=1)
def _phantom_series() -> tuple[bytes, ...]:
    from ..writers import ct_slice_datasets

    datasets = ct_slice_datasets(
        _phantom_ct().volume,
        study_uid=PHANTOM_STUDY_UID,
        series_uid=PHANTOM_SERIES_UIDS[0],
        patient_id=PHANTOM_PATIENT_ID,
    )
    return tuple(_file_bytes(ds) for ds in datasets[:6])


def phantom_series() -> list[bytes]:
    """Six consecutive 32×32 slices of a phantom chest CT (10 mm apart), as CT Image files."""
    return list(_phantom_series())


def _phantom_cr() -> bytes:
    from ..phantoms import make_radiograph
    from ..writers import radiograph_dataset

    film = make_radiograph(_phantom_ct(), size=(96, 80)).pixels
    ds = radiograph_dataset(
        film,
        modality="CR",
        photometric="MONOCHROME1",
        spacing=(0.5, 0.5),
        study_uid=PHANTOM_STUDY_UID,
        series_uid=PHANTOM_SERIES_UIDS[1],
        patient_id=PHANTOM_PATIENT_ID,
    )
    return _file_bytes(ds)


def _file_bytes(ds) -> bytes:
    """A writer's dataset as Part-10 bytes, its dates and times pinned for reproducibility."""

    from pydicom import dcmwrite

    for keyword in ("StudyDate", "SeriesDate", "ContentDate"):
        setattr(ds, keyword, "20000101")
    for keyword in ("StudyTime", "SeriesTime", "ContentTime"):
        setattr(ds, keyword, "120000")
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def corpus_identifiers() -> frozenset[str]:
    """PatientName and PatientID of every seed file, to check that no message carries them.

    Purely numeric IDs (e.g. ``"99000"``) are left out: the digits of a reported size may match.
    """
    from pydicom import dcmread

    found = {PHANTOM_PATIENT_ID}
    for _, data in _seed_corpus():
        ds = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        found |= {str(ds.get(k, "") or "") for k in ("PatientName", "PatientID")}
    return frozenset(s for s in found if len(s) >= 4 and any(c.isalpha() for c in s))
