"""End to end: the real ``bentoml serve`` on 127.0.0.1 and a free port, real DICOM uploads
(pydicom's and pydicom-data's files, phantom studies), answers checked against running the
exported model directly; every bad input is a 4xx and the server keeps answering; 16 concurrent
requests each get their single-request answer; API keys (issue #9).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from export.runtime import load
from imaging.dicom import read_image
from imaging.phantoms import make_chest_ct, make_radiograph
from imaging.preprocess import prepare_radiograph, prepare_volume, radiograph_to_unit
from imaging.series import read_series
from imaging.sliding import WindowSpec, sliding_window
from imaging.writers import ct_slice_datasets, radiograph_bytes
from serve import launch
from serve.timing import parse_server_timing

from .conftest import dicom_bytes as _bytes
from .conftest import zip_bytes as _zip

pytestmark = pytest.mark.slow
KEY = "test-key-0123456789"
HEADERS = {"X-API-Key": KEY}
PATIENT = "Zanzibar^Quixote"  # distinctive: must never appear in the server's output
PATIENT_ID = "PID-7Q3X-ZANZIBAR"


def _dcm(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    env = {
        "ANATOMIX_API_KEYS": f"other-key-0123456789,{KEY}",
        "ANATOMIX_MAX_UPLOAD_MB": "16",
        "ANATOMIX_MAX_FILES": "40",
        "ANATOMIX_MAX_LATENCY_MS": "20",
    }
    try:
        srv = launch.start(exports, log, env=env)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield srv.url, log
    srv.stop()


def _post(url, path, files, data=None, headers=HEADERS, timeout=120):
    parts = [("files", (name, content, "application/dicom")) for name, content in files]
    return httpx.post(url + path, files=parts, data=data or {}, headers=headers, timeout=timeout)


def _film(seed: int) -> bytes:
    film = make_radiograph(make_chest_ct(seed, shape=(40, 96, 96)), size=(160, 140))
    ds = pydicom.dcmread(io.BytesIO(radiograph_bytes(film.pixels, modality="CR")))
    ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
    return _dcm(ds)


def _expected_cxr(exports, content: bytes) -> dict:
    rt = load(exports / "cxr")
    x, _ = prepare_radiograph(radiograph_to_unit(read_image(content)), rt.manifest.preprocessing)
    return rt.predict(x[None])


def test_classify_real_and_phantom_radiographs(server, exports):
    url, _ = server
    files = [
        ("RG1_UNCR.dcm", _bytes("RG1_UNCR.dcm")),
        ("RG3_UNCR.dcm", _bytes("RG3_UNCR.dcm")),
        ("phantom.dcm", _film(1)),
    ]
    r = _post(url, "/v1/cxr/classify", files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "cxr" and body["label_sets"] == ["nih", "rsna"]
    # where the request's time went, for clients and bench.serve (W3C Server-Timing)
    stages = parse_server_timing(r.headers["server-timing"])
    assert set(stages) == {"queue", "decode", "preprocess", "infer"}
    assert all(v >= 0 for v in stages.values()) and stages["decode"] > 0
    for (name, content), res in zip(files, body["results"], strict=True):
        assert res["file"] == name
        assert res["sop_uid"] == str(pydicom.dcmread(io.BytesIO(content)).SOPInstanceUID)
        want = _expected_cxr(exports, content)
        got = [res["findings"]["nih"][k] for k in ("effusion", "nodule", "cardiomegaly")]
        np.testing.assert_allclose(got, want["probs_nih"][0], atol=1e-4)
        got = [res["findings"]["rsna"][k] for k in ("normal", "opacity")]
        np.testing.assert_allclose(got, want["probs_rsna"][0], atol=1e-4)


def test_embed(server, exports):
    url, _ = server
    r = _post(url, "/v1/embed", [("a.dcm", _bytes("RG1_UNCR.dcm"))])
    assert r.status_code == 200, r.text
    want = _expected_cxr(exports, _bytes("RG1_UNCR.dcm"))["embedding"][0]
    np.testing.assert_allclose(r.json()["results"][0]["embedding"], want, atol=1e-4)


def _series(seed: int, shape=(24, 48, 48)) -> list[bytes]:
    ct = make_chest_ct(seed, shape=shape, findings=("nodule",))
    out = []
    for ds in ct_slice_datasets(ct.volume):
        ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
        out.append(_dcm(ds))
    return out


def test_segment_series_as_files_and_as_zip(server, exports):
    url, _ = server
    slices = _series(5)
    rt = load(exports / "nodule_seg")
    vol = read_series(slices)
    x = prepare_volume(vol, rt.manifest.preprocessing)
    spec = WindowSpec.from_inference(rt.manifest.inference, x.shape[1:])
    probs = sliding_window(x, spec, lambda b: rt.predict(b)["probabilities"])
    want = int((probs[0] >= 0.5).sum())
    as_files = _post(url, "/v1/ct/segment", [(f"s{i}.dcm", b) for i, b in enumerate(slices)])
    as_zip = _post(
        url,
        "/v1/ct/segment",
        [("study.zip", _zip({f"ct/{i}.dcm": b for i, b in enumerate(slices)}))],
    )
    for r in (as_files, as_zip):
        assert r.status_code == 200, r.text
        nodule = r.json()["labels"]["nodule"]
        assert abs(nodule["voxels"] - want) <= max(2, want // 1000)  # threshold ties only
        assert nodule["volume_ml"] == pytest.approx(
            nodule["voxels"] * np.prod(vol.spacing) / 1e3, rel=1e-3
        )
    assert as_files.json()["labels"] == as_zip.json()["labels"]
    assert set(parse_server_timing(as_zip.headers["server-timing"])) == {
        "queue",
        "decode",
        "preprocess",
        "infer",
    }


def test_a_whole_study_is_segmented_on_the_series_the_rules_choose(server):
    """Issue #20 item 4: a zip of a study with a localizer, a secondary capture and the axial
    series segments the axial one (the same answer as the axial series sent alone); the reasons
    for the others are in the answer; series_uid overrides; an absent one is a 422."""
    url, _ = server
    ct = make_chest_ct(5, shape=(24, 48, 48), findings=("nodule",))
    study = pydicom.uid.generate_uid()
    axial, loc, sc = (pydicom.uid.generate_uid() for _ in range(3))
    series = {uid: ct_slice_datasets(ct.volume, study_uid=study, series_uid=uid)
              for uid in (axial, loc, sc)}  # fmt: skip
    series[loc], series[sc] = series[loc][:3], series[sc][:4]  # within the 40-file limit
    for ds in series[loc]:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    for ds in series[sc]:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    files = {f"{uid[-6:]}/{i}.dcm": _dcm(ds) for uid in (loc, sc, axial)
             for i, ds in enumerate(series[uid])}  # fmt: skip
    whole = _post(url, "/v1/ct/segment", [("study.zip", _zip(files))])
    alone = _post(
        url, "/v1/ct/segment", [(f"{i}.dcm", _dcm(ds)) for i, ds in enumerate(series[axial])]
    )
    assert whole.status_code == 200 and alone.status_code == 200, whole.text
    got = whole.json()
    assert got["series_uid"] == axial and got["labels"] == alone.json()["labels"]
    assert got["selection"]["chosen"] == axial
    assert got["selection"]["rejected"] == {
        loc: "ImageType includes LOCALIZER",
        sc: "SOP class 1.2.840.10008.5.1.4.1.1.7 is not accepted (secondary capture or similar)",
    }
    assert alone.json()["selection"] == {"chosen": axial, "rejected": {}}
    forced = _post(url, "/v1/ct/segment", [("study.zip", _zip(files))], data={"series_uid": loc})
    assert (
        forced.status_code == 422
        and forced.json()["error"] == "inconsistent_series"
        or (forced.status_code == 200 and forced.json()["series_uid"] == loc)
    )
    absent = _post(
        url, "/v1/ct/segment", [("study.zip", _zip(files))], data={"series_uid": "1.2.3"}
    )
    assert absent.status_code == 422 and absent.json()["error"] == "unknown_series"
    bad = _post(url, "/v1/ct/segment", [("study.zip", _zip(files))], data={"series_uid": "PID-7"})
    assert bad.status_code == 422 and "PID-7" not in bad.text


def _bogus_syntax() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7.8.9"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


BAD = {
    "not_dicom": ("/v1/cxr/classify", lambda: [("x.txt", b"hello world" * 50)], 400),
    "truncated": ("/v1/cxr/classify", lambda: [("t.dcm", _bytes("RG1_UNCR.dcm")[:300_000])], 400),
    "no_pixel_data": (
        "/v1/cxr/classify",
        lambda: [("p.dcm", _bytes("ExplVR_LitEndNoMeta.dcm"))],
        422,
    ),
    "unsupported_transfer_syntax": ("/v1/cxr/classify", lambda: [("u.dcm", _bogus_syntax())], 415),
    "wrong_modality": ("/v1/cxr/classify", lambda: [("mr.dcm", _bytes("MR_small.dcm"))], 422),
    "no_suitable_series": (  # two 4-slice series: neither is a volume under the CT rules
        "/v1/ct/segment",
        lambda: [
            (f"{i}.dcm", b) for i, b in enumerate(_series(7)[:4] + _series(8, (24, 56, 56))[:4])
        ],
        422,
    ),
    "upload_too_large": ("/v1/cxr/classify", lambda: [("a.dcm", _bytes("RG1_UNCR.dcm"))] * 3, 413),
    "unsafe_archive": (
        "/v1/ct/segment",
        lambda: [("z.zip", _zip({"ok.dcm": b"x", "../../etc/evil": b"y"}))],
        400,
    ),
    "too_many_files": (
        "/v1/ct/segment",
        lambda: [("z.zip", _zip({f"{i}.dcm": b"x" for i in range(50)}))],
        413,
    ),
}


CODES = {"truncated": "corrupt_file"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(server, case):
    url, _ = server
    path, files, status = BAD[case]
    r = _post(url, path, files())
    assert r.status_code == status, r.text
    assert r.json()["error"] == CODES.get(case, case) and r.json()["detail"]
    ok = _post(url, "/v1/cxr/classify", [("g.dcm", _bytes("RG3_UNCR.dcm"))])
    assert ok.status_code == 200


def test_modality_override(server):
    url, _ = server
    r = _post(
        url,
        "/v1/cxr/classify",
        [("mr.dcm", _bytes("MR_small.dcm"))],
        data={"allow_any_modality": "true"},
    )
    assert r.status_code == 200, r.text


def test_sixteen_concurrent_requests_match_their_single_answers(server):
    url, _ = server
    films = [(f"f{i}.dcm", _film(20 + i)) for i in range(16)]
    single = [_post(url, "/v1/cxr/classify", [f]).json()["results"][0] for f in films]

    def one(f):
        with httpx.Client() as client:  # one client per thread
            parts = [("files", (f[0], f[1], "application/dicom"))]
            return client.post(url + "/v1/cxr/classify", files=parts, headers=HEADERS, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, films))
    assert all(r.status_code == 200 for r in answers)
    for r, want in zip(answers, single, strict=True):
        got = r.json()["results"][0]["findings"]
        for head, probs in want["findings"].items():
            np.testing.assert_allclose(list(got[head].values()), list(probs.values()), atol=1e-5)


def test_api_keys(server):
    url, _ = server
    files = [("g.dcm", _bytes("RG3_UNCR.dcm"))]
    assert _post(url, "/v1/cxr/classify", files, headers={}).status_code == 401
    wrong = _post(url, "/v1/cxr/classify", files, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert _post(url, "/v1/cxr/classify", files, headers=bearer).status_code == 200
    assert httpx.get(url + "/healthz").status_code == 200  # health stays open
    models = httpx.get(url + "/v1/models", headers=HEADERS)
    assert models.status_code == 200
    assert {m["id"] for m in models.json()["models"]} == {"cxr", "nodule_seg", "peac"}
    assert httpx.get(url + "/v1/models").status_code == 401


def test_no_patient_identifier_in_the_server_output(server):
    url, log = server
    _post(url, "/v1/cxr/classify", [("p.dcm", _film(3))])
    text = log.read_text(errors="replace")
    assert "Service AnatomixService initialized" in text or "cxr" in text
    assert PATIENT not in text and "Zanzibar" not in text and PATIENT_ID not in text


def test_correspond_matches_peac_correspondence(server, exports, tmp_path):
    from models.checkpoint import load_model
    from models.peac import correspond

    url, _ = server
    a, b = _bytes("RG1_UNCR.dcm"), _film(9)
    points = [[500.0, 400.0], [900.0, 1200.0], [1500.0, 900.0], [10.0, 10.0]]
    files = [
        ("image_a", ("a.dcm", a, "application/dicom")),
        ("image_b", ("b.dcm", b, "application/dicom")),
    ]
    text = ";".join(f"{r},{c}" for r, c in points)
    r = httpx.post(
        url + "/v1/cxr/correspond", files=files, data={"points": text}, headers=HEADERS, timeout=120
    )
    assert r.status_code == 200, r.text
    matches = r.json()["matches"]
    model = load_model(exports.parent / "w" / "peac.safetensors").eval()
    ua, ub = (radiograph_to_unit(read_image(x)) for x in (a, b))
    want, sim = correspond(model, ua, ub).query(np.asarray(points))
    for m, w, s in zip(matches, want, sim, strict=True):
        if np.isnan(s):
            assert m["b"] is None
            continue
        np.testing.assert_allclose(m["b"], w, atol=1e-6)
        assert m["similarity"] == pytest.approx(float(s), abs=1e-3)
    grid = httpx.post(url + "/v1/cxr/correspond", files=files, headers=HEADERS, timeout=120)
    assert grid.status_code == 200 and len(grid.json()["matches"]) == 25
    bad = httpx.post(
        url + "/v1/cxr/correspond",
        files=files,
        data={"points": "1;2"},
        headers=HEADERS,
        timeout=120,
    )
    assert bad.status_code == 400 and bad.json()["error"] == "bad_points"


def test_segment_as_dicom_seg_references_the_source_slices(server):
    import highdicom as hd

    url, _ = server
    slices = _series(6)
    files = [("study.zip", _zip({f"ct/{i}.dcm": b for i, b in enumerate(slices)}))]
    summary = _post(url, "/v1/ct/segment", files).json()["labels"]["nodule"]
    r = _post(url, "/v1/ct/segment.dcm", files)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("application/dicom")
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(r.content)))
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "nodule"
    sources = {str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for b in slices}
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == sources
    assert int(np.asarray(seg.pixel_array).astype(bool).sum()) == summary["voxels"]
    bad = _post(url, "/v1/ct/segment.dcm", [("x.txt", b"not dicom" * 40)])
    assert bad.status_code == 400 and bad.json()["error"] == "not_dicom"


def test_server_dice_equals_export_evaluate(server, exports):
    """Issue #17: the Dice computed from the server's answers (DICOM SEG) on held-out phantom
    studies equals what ``export.evaluate`` reports for that export, mask for mask; and the
    manifest's blend decides those masks (the constant blend gives others)."""
    import dataclasses

    import highdicom as hd

    from export.evaluate import evaluate_export
    from export.segmentation import segment_volume
    from train.finetune.tasks import held_out_series
    from train.metrics import dice

    url, _ = server
    args = {"n_test_volumes": 2, "phantom_shape": [24, 64, 64]}
    masks = []
    report = evaluate_export(
        exports / "nodule_seg", task="synthetic_nodule_seg", task_args=args, masks=masks
    )
    assert report["inference"]["blend"] == "gaussian"
    rt = load(exports / "nodule_seg")
    legacy = dataclasses.replace(
        rt.manifest, inference=rt.manifest.inference | {"blend": "constant"}
    )
    dices, differs = [], False
    series = held_out_series("synthetic_nodule_seg", **args)
    for (volume, truth), want in zip(series, masks, strict=True):
        slices = ct_slice_datasets(volume)
        uids = [str(ds.SOPInstanceUID) for ds in slices]
        files = [("study.zip", _zip({f"ct/{i}.dcm": _dcm(ds) for i, ds in enumerate(slices)}))]
        r = _post(url, "/v1/ct/segment.dcm", files)
        assert r.status_code == 200, r.text[:300]
        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(r.content)))
        got = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[1], assert_missing_frames_are_empty=True
        )[..., 0].astype(bool)  # (D, H, W)
        np.testing.assert_array_equal(got, want[0])
        dices.append(dice(got[None], truth[None]))
        differs |= not np.array_equal(segment_volume(volume, legacy, rt.predict)[0], want)
    assert float(np.mean(dices)) == pytest.approx(report["volume_dice"], abs=1e-12)
    assert differs


def test_fuzzed_uploads_get_only_2xx_or_4xx(server):
    """Mutated real DICOM files (imaging.fuzz, seeded) to every DICOM endpoint: never a 5xx, no
    identifier of the corpus in an answer, and the server answers a good request afterwards."""
    from imaging.fuzz import corpus_identifiers, make_case, make_series_case

    url, _ = server
    secrets = [s for s in corpus_identifiers() if len(s) >= 4]
    seen = {}
    with httpx.Client(timeout=120, headers=HEADERS) as client:
        for i in range(60):
            case = make_case(11, i)
            route = ("/v1/cxr/classify", "/v1/embed")[i % 2]
            files = [("files", (f"f{i}.dcm", case.data, "application/dicom"))]
            r = client.post(url + route, files=files, data={"allow_any_modality": "true"})
            assert r.status_code < 500, (i, case.origin, case.mutators, r.text[:300])
            assert not any(s in r.text for s in secrets), (i, case.origin, case.mutators)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
        for i in range(8):
            case = make_series_case(11, i)
            files = [("files", (f"s{k}.dcm", b, "application/dicom"))
                     for k, b in enumerate(case.data)]  # fmt: skip
            for route in ("/v1/ct/segment", "/v1/ct/segment.dcm"):
                r = client.post(url + route, files=files)
                assert r.status_code < 500, (i, route, case.mutators, r.text[:300])
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
    assert len(seen) >= 2 and any(400 <= c < 500 for c in seen), seen  # the damage was seen
    ok = _post(url, "/v1/cxr/classify", [("g.dcm", _bytes("RG3_UNCR.dcm"))])
    assert ok.status_code == 200


def test_metrics_have_stage_histograms_batch_sizes_and_error_codes(server):
    url, _ = server
    assert _post(url, "/v1/cxr/classify", [("a.dcm", _film(3))]).status_code == 200
    bad = _post(url, "/v1/cxr/classify", [("bad.dcm", b"not dicom at all")])
    assert bad.status_code == 400
    text = httpx.get(url + "/metrics", timeout=30).text

    def value(series: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(series + " "))
        return float(line.split()[-1])

    route = 'route="/v1/cxr/classify"'
    for stage in ("queue", "decode", "preprocess", "infer"):
        assert value(f'anatomix_stage_seconds_count{{{route},stage="{stage}"}}') >= 1
    assert value('anatomix_batch_size_count{model="cxr"}') >= 1
    code = bad.json()["error"]
    assert value(f'anatomix_refused_total{{code="{code}",{route}}}') >= 1


def _lateral(seed: int) -> bytes:
    from .films import lateral_film

    film = lateral_film(make_chest_ct(seed, shape=(40, 96, 96)))
    ds = pydicom.dcmread(io.BytesIO(radiograph_bytes(film, modality="CR")))
    ds.PatientName, ds.PatientID, ds.ViewPosition = PATIENT, PATIENT_ID, "LL"
    return _dcm(ds)


def test_input_guard_warnings(server):
    url, _ = server
    files = [("frontal.dcm", _film(1)), ("RG1_UNCR.dcm", _bytes("RG1_UNCR.dcm")),
             ("lateral.dcm", _lateral(2))]  # fmt: skip
    r = _post(url, "/v1/cxr/classify", files)
    assert r.status_code == 200, r.text
    frontal, real, lateral = r.json()["results"]
    assert frontal["warnings"] == [] and real["warnings"] == []
    # its centre contrast (no bright mediastinum) is also far from the training films'
    assert [w["code"] for w in lateral["warnings"]][0] == "lateral_view"
    assert lateral["warnings"][0]["file"] == "lateral.dcm"
    assert PATIENT not in r.text and PATIENT_ID not in r.text
    r = _post(url, "/v1/ct/segment", [(f"s{i}.dcm", b) for i, b in enumerate(_series(5))])
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == []


def test_refused_warning_is_a_422(exports, tmp_path):
    env = {"ANATOMIX_API_KEYS": KEY, "ANATOMIX_REFUSE_WARNINGS": "lateral_view"}
    try:
        srv = launch.start(exports, tmp_path / "server.log", env=env)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        r = _post(srv.url, "/v1/cxr/classify", [("frontal.dcm", _film(1))])
        assert r.status_code == 200 and r.json()["results"][0]["warnings"] == [], r.text
        r = _post(srv.url, "/v1/cxr/classify", [("lateral.dcm", _lateral(2))])
        assert r.status_code == 422 and r.json()["error"] == "lateral_view", r.text
    finally:
        srv.stop()
