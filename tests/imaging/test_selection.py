"""Series selection as data (issue #20 item 4): a multi-series phantom study (an axial CT, a
localizer, a secondary capture, a thick-slice reconstruction) and pydicom's real files, against
the shipped rules and deployment overrides; every passed-over series has its reason."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from imaging.dicom import read_image
from imaging.phantoms import make_chest_ct
from imaging.selection import Rules, select_series, summarise
from imaging.writers import ct_slice_datasets

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _images(datasets) -> list:
    out = []
    for ds in datasets:
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        out.append(read_image(buf.getvalue()))
    return out


@pytest.fixture(scope="module")
def study():
    """Four series of one study: axial (32 slices, 2.5 mm... as the phantom), a 3-slice
    localizer, a secondary capture of 20 slices, and the axial volume with a gap in it."""
    study_uid = generate_uid()
    volume = make_chest_ct(3, shape=(32, 48, 48)).volume
    uids = {k: generate_uid() for k in ("axial", "localizer", "capture", "gappy")}
    axial = ct_slice_datasets(volume, study_uid=study_uid, series_uid=uids["axial"])
    localizer = ct_slice_datasets(volume, study_uid=study_uid, series_uid=uids["localizer"])[:3]
    for ds in localizer:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    capture = ct_slice_datasets(volume, study_uid=study_uid, series_uid=uids["capture"])[:20]
    for ds in capture:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    gappy = ct_slice_datasets(volume, study_uid=study_uid, series_uid=uids["gappy"])
    gappy = gappy[:10] + gappy[14:]  # four slices missing: positions no longer evenly spaced
    images = _images(axial + localizer + capture + gappy)
    return uids, images


def test_the_axial_series_is_chosen_and_every_other_has_its_reason(study):
    uids, images = study
    summaries = summarise(images)
    assert [s.series_uid for s in summaries] == list(uids.values())
    by = {s.series_uid: s for s in summaries}
    assert by[uids["axial"]].slices == 32 and by[uids["axial"]].spacing_regular is True
    assert by[uids["gappy"]].spacing_regular is False
    chosen = select_series(summaries, Rules.default("ct"))
    assert chosen.chosen == uids["axial"]
    assert chosen.reasons == {
        uids["localizer"]: "ImageType includes LOCALIZER",
        uids["capture"]: f"SOP class {SECONDARY_CAPTURE} is not accepted (secondary capture or "
        "similar)",
        uids["gappy"]: "slice positions are not evenly spaced",
    }
    assert chosen.to_dict()["series"][0]["series_uid"] == uids["axial"]


def test_an_explicit_series_uid_overrides_the_rules(study):
    uids, images = study
    summaries = summarise(images)
    forced = select_series(summaries, Rules.default("ct"), series_uid=uids["gappy"])
    assert forced.chosen == uids["gappy"] and forced.reasons[uids["axial"]].startswith("not the")
    with pytest.raises(KeyError, match="no series"):
        select_series(summaries, Rules.default("ct"), series_uid="1.2.3")


def test_deployment_rules_change_the_choice(study):
    uids, images = study
    summaries = summarise(images)
    strict = Rules.from_dict({"modalities": ["CT"], "reject_image_types": ["LOCALIZER", "DERIVED"]})
    none = select_series(summaries, strict)  # the phantom writer marks its slices DERIVED
    assert none.chosen is None and len(none.reasons) == 4
    assert none.reasons[uids["axial"]] == "ImageType includes DERIVED"
    assert none.reasons[uids["localizer"]] == "ImageType includes LOCALIZER"
    loose = Rules.from_dict({"modalities": ["CT"], "min_slices": 1})
    ranked = select_series(summaries, loose)  # no spacing rule: the most slices wins
    assert ranked.chosen == uids["axial"]
    assert ranked.reasons[uids["gappy"]] == f"usable, but ranked below {uids['axial']}"


def test_bad_rule_files_are_refused_naming_the_rule(tmp_path):
    with pytest.raises(ValueError, match="unknown selection rule"):
        Rules.from_dict({"modality": ["CT"]})
    with pytest.raises(ValueError, match="prefer"):
        Rules.from_dict({"prefer": "newest"})
    with pytest.raises(ValueError, match="slice_thickness_mm"):
        Rules.from_dict({"slice_thickness_mm": [5, 1]})
    bad = tmp_path / "rules.yaml"
    bad.write_text("modalities: [CT\n")
    with pytest.raises(ValueError, match="rules.yaml"):
        Rules.load(bad)


def test_real_files_against_the_shipped_rules():
    """pydicom's chest CR (frontal, CHEST) passes the radiograph rules; its MR and a lateral
    copy of the CR do not, each with the reason; its single CT slice is no volume."""
    cr = read_image(get_testdata_file("RG1_UNCR.dcm"))
    mr = read_image(get_testdata_file("MR_small.dcm"))
    ct = read_image(get_testdata_file("CT_small.dcm"))
    lateral = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    lateral.ViewPosition, lateral.SeriesInstanceUID = "LL", generate_uid()
    [lat] = _images([lateral])
    films = select_series(summarise([cr, mr, lat]), Rules.default("radiograph"))
    assert films.chosen == cr.series_uid
    assert films.reasons[mr.series_uid] == "modality MR, not CR/DX/DR"
    assert films.reasons[lat.series_uid] == "view LL, not PA/AP"
    volumes = select_series(summarise([ct]), Rules.default("ct"))
    assert volumes.chosen is None
    assert volumes.reasons[ct.series_uid] == "1 slice(s), fewer than 16"
    assert np.isfinite(ct.pixels).all()
