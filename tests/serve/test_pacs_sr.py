"""The classification SR writer (serve/pacs/sr.py) on a real radiograph header (pydicom-data's
RG1_UNCR.dcm, a CR chest film): findings, references, UIDs and patient data are checked by a raw
pydicom walk of the written file against the inputs, never against the writer's own reader."""

from __future__ import annotations

import io
import logging

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.config import strict_reading
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, ComprehensiveSRStorage, generate_uid

from serve.pacs.sr import sr_bytes, sr_findings

LONG = "Opacity of the left lower lobe, possibly consolidation or atelectasis (see prior)"
FINDINGS = {
    "nih": {
        "Atelectasis": 0.1234567,
        "Pleural_Thickening": np.float32(2.5e-5),  # a numpy scalar, as model outputs may be
        "a\\b, (c/d) [e]": 0.33333333,  # backslash: not allowed in a Code Meaning (LO)
        LONG: 0.5000004,
        "Épanchement pleural 肺炎": 0.75,  # outside the source's ISO_IR 100
    },
    "rsna": {"Atelectasis": 0.9999999, "No finding": 1e-9},
}
MODEL, VERSION, ROOT = "ark-demo", "1.2.0", "1.2.3.4"
PATIENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber")


@pytest.fixture(scope="module")
def film() -> Dataset:
    return pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"), stop_before_pixels=True)


def write(source: Dataset, findings=FINDINGS, **kw) -> Dataset:
    data = sr_bytes(source, findings, model_id=MODEL, version=VERSION, **kw)
    return pydicom.dcmread(io.BytesIO(data))


def walk(items):
    """Every content item of a content tree, depth first, with its parent."""
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodingSchemeDesignator, code.CodeValue


def children(item: Dataset, scheme: str, value: str) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if concept(c) == (scheme, value)]


def raw_groups(ds: Dataset) -> dict[str, list[Dataset]]:
    """Measurement groups (DCM 125007) by their tracking identifier (DCM 112039) → NUM items."""
    groups = {}
    for item in walk(ds.ContentSequence):
        if item.ValueType == "CONTAINER" and concept(item) == ("DCM", "125007"):
            (tracking,) = children(item, "DCM", "112039")
            groups[tracking.TextValue] = [c for c in item.ContentSequence if c.ValueType == "NUM"]
    return groups


def raw_label(num: Dataset) -> str:
    """The label: TID 1210 equivalent meaning (DCM 121050) if present, else the Code Meaning."""
    equivalent = children(num, "DCM", "121050")
    return equivalent[0].TextValue if equivalent else num.ConceptNameCodeSequence[0].CodeMeaning


def test_round_trip_every_probability_under_its_label_set_and_label(film):
    ds = write(film)
    groups = raw_groups(ds)
    assert list(groups) == list(FINDINGS)
    for label_set, probs in FINDINGS.items():
        got = {}
        for num in groups[label_set]:
            value = num.MeasuredValueSequence[0]
            got[raw_label(num)] = float(value.NumericValue)  # the DS text itself
            (unit,) = value.MeasurementUnitsCodeSequence
            assert (unit.CodingSchemeDesignator, unit.CodeValue) == ("UCUM", "1")
        assert got == {label: round(float(p), 6) for label, p in probs.items()}
    expected = {s: {lab: round(float(p), 6) for lab, p in ps.items()} for s, ps in FINDINGS.items()}
    assert sr_findings(ds) == expected


def test_label_codes_are_private_short_unique_and_stable(film):
    first, second = write(film), write(film, findings={"other": {"Atelectasis": 0.2}})
    codes = {}
    for group in raw_groups(first).values():
        for num in group:
            code = num.ConceptNameCodeSequence[0]
            assert code.CodingSchemeDesignator == "99ANATOMIX"
            assert 0 < len(code.CodeValue) <= 16 and len(code.CodeMeaning) <= 64
            assert codes.setdefault(raw_label(num), code.CodeValue) == code.CodeValue
    labels = {label for probs in FINDINGS.values() for label in probs}
    assert set(codes) == labels and len(set(codes.values())) == len(labels)
    (other,) = raw_groups(second)["other"]
    assert other.ConceptNameCodeSequence[0].CodeValue == codes["Atelectasis"]
    # the private scheme is declared (PS3.3 C.12.1.1.2)
    schemes = [s.CodingSchemeDesignator for s in first.CodingSchemeIdentificationSequence]
    assert "99ANATOMIX" in schemes


def test_algorithm_named_on_every_measurement_and_as_the_observer_device(film):
    ds = write(film)
    for group in raw_groups(ds).values():
        for num in group:
            assert children(num, "DCM", "111001")[0].TextValue == f"anatomix {MODEL}"
            assert children(num, "DCM", "111003")[0].TextValue == VERSION
    root = ds.ContentSequence
    assert children(ds, "DCM", "121005")[0].ConceptCodeSequence[0].CodeValue == "121007"  # device
    assert [c.TextValue for c in root if concept(c) == ("DCM", "121013")] == [f"anatomix {MODEL}"]
    assert [c.TextValue for c in root if concept(c) == ("DCM", "121015")] == [MODEL]


def test_references_the_radiograph_in_its_study(film):
    ds = write(film)
    assert ds.Modality == "SR" and ds.SOPClassUID == ComprehensiveSRStorage
    assert ds.file_meta.MediaStorageSOPClassUID == ComprehensiveSRStorage
    assert ds.StudyInstanceUID == film.StudyInstanceUID
    assert ds.SeriesInstanceUID != film.SeriesInstanceUID
    images = [i for i in walk(ds.ContentSequence) if i.ValueType == "IMAGE"]
    assert len(images) >= 1 + len(FINDINGS)  # the image library entry and each group's source
    for image in images:
        (ref,) = image.ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == film.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == film.SOPClassUID
    library = [i for i in walk(ds.ContentSequence) if concept(i) == ("DCM", "111028")]
    assert len(library) == 1
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == film.StudyInstanceUID
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == film.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert (sop.ReferencedSOPInstanceUID, sop.ReferencedSOPClassUID) == (
        film.SOPInstanceUID,
        film.SOPClassUID,
    )
    assert (ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer) == (901, 1, "anatomix")
    assert ds.SeriesDescription == f"anatomix {MODEL} findings"


def test_patient_and_study_copied_from_the_source_and_nothing_invented(film):
    ds = write(film)
    for keyword in (*PATIENT, "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName"):
        assert ds[keyword].value == film[keyword].value, keyword
    for elem in ds.group_dataset(0x0010):
        assert elem.tag in film and elem.value == film[elem.tag].value, elem.keyword
    # a header without the Type 2 patient attributes: written empty, not made up
    bare = Dataset()
    bare.update(film)
    for keyword in (*PATIENT, "StudyID", "OtherPatientIDs"):
        delattr(bare, keyword)
    ds = write(bare)
    assert ds.StudyInstanceUID == film.StudyInstanceUID
    for keyword in (*PATIENT, "StudyID"):
        assert ds.get(keyword) in ("", None), keyword
    assert all(e.value in ("", None) for e in ds.group_dataset(0x0010))


def test_non_ascii_patient_name_survives_the_character_set(film):
    source = Dataset()
    source.update(film)
    source.PatientName = "Müller^Jörg"  # ISO_IR 100 (Latin-1), as the source declares
    ds = write(source)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jörg"


def test_source_with_pixel_data_writes_no_pixels(film):
    full = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    assert "PixelData" in full
    ds = write(full)
    assert "PixelData" not in ds
    assert ds.StudyInstanceUID == full.StudyInstanceUID
    assert sr_findings(ds)["nih"]["Atelectasis"] == round(0.1234567, 6)


def test_uids_follow_the_job_when_given(film):
    job = ["study-1", film.SOPInstanceUID, MODEL]
    a, b = write(film, uid_root=ROOT, uids_from=job), write(film, uid_root=ROOT, uids_from=job)
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert a.SeriesInstanceUID == generate_uid(f"{ROOT}.", [*job, "sr-series"])
    assert a.SOPInstanceUID == generate_uid(f"{ROOT}.", [*job, "sr-instance"])
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    for uid in (a.SeriesInstanceUID, a.SOPInstanceUID):
        assert uid.startswith(f"{ROOT}.") and len(uid) <= 64 and uid.is_valid
    c = write(film, uid_root=ROOT, uids_from=[*job[:-1], "other-model"])
    assert c.SeriesInstanceUID != a.SeriesInstanceUID and c.SOPInstanceUID != a.SOPInstanceUID
    # no uid_root: pydicom's root, and still deterministic
    d = write(film, uids_from=job)
    assert d.SOPInstanceUID == generate_uid(PYDICOM_ROOT_UID, [*job, "sr-instance"])
    assert d.SOPInstanceUID == write(film, uids_from=job).SOPInstanceUID


def test_uids_random_without_a_job(film):
    a, b = write(film, uid_root=ROOT), write(film, uid_root=ROOT)
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SOPInstanceUID.startswith(f"{ROOT}.") and a.SOPInstanceUID.is_valid
    assert write(film).SOPInstanceUID.startswith(PYDICOM_ROOT_UID)


@pytest.mark.parametrize("root", ["", "1.2.a", "01.2", "1..2", "1.2.-3", "1." + "23." * 20])
def test_bad_uid_root_refused(film, root):
    with pytest.raises(ValueError):
        sr_bytes(film, FINDINGS, model_id=MODEL, version=VERSION, uid_root=root)


def test_bad_inputs_refused(film):
    with pytest.raises(ValueError):
        sr_bytes(film, {}, model_id=MODEL, version=VERSION)
    with pytest.raises(ValueError):
        sr_bytes(film, {"nih": {"x": float("nan")}}, model_id=MODEL, version=VERSION)
    headless = Dataset()
    headless.update(film)
    del headless.SOPInstanceUID
    with pytest.raises(ValueError):
        sr_bytes(headless, FINDINGS, model_id=MODEL, version=VERSION)
    with pytest.raises(ValueError):
        sr_findings(film)


def test_highdicom_and_strict_pydicom_read_it(film):
    data = sr_bytes(film, FINDINGS, model_id=MODEL, version=VERSION)
    sr = hd.sr.srread(io.BytesIO(data))
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    groups = sr.content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == list(FINDINGS)
    values = [m.value for m in groups[1].get_measurements()]
    assert values == [round(p, 6) for p in FINDINGS["rsna"].values()]
    # every value of every element conforms to its VR (LO, SH, DS, UI lengths and characters)
    with strict_reading():
        ds = pydicom.dcmread(io.BytesIO(data))
        for _ in ds.iterall():
            pass
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buf.getvalue())).SOPInstanceUID == ds.SOPInstanceUID


def test_writer_logs_nothing_identifying(film, caplog):
    caplog.set_level(logging.DEBUG)
    write(film)
    # the identifying values (Patient's Sex, a single letter, would match any text)
    secrets = [str(film[k].value) for k in PATIENT if k != "PatientSex"]
    assert all(len(s) >= 4 for s in secrets)
    for record in caplog.records:
        # highdicom's own records name attributes and the source UID; the service's
        # privacy.install() withholds even those
        assert record.name.split(".")[0] in ("highdicom", "pydicom"), record.name
        assert not any(s in record.getMessage() for s in secrets)
