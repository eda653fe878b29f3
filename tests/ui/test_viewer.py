"""Issue #21: the viewer page at ``/`` in a real headless Chromium (Debian ``chromium`` and
``chromium-driver``, driven by Selenium) against a real ``bentoml serve``: what the page shows
equals what the API answers for the same files — the radiograph bars, the CT overlay pixels and
mL, the matched point of a click — a bad file shows the API's error and the page keeps working,
and with API keys set the page works once the key is typed. Screenshots of each view are written
as PNGs (``ANATOMIX_UI_SCREENSHOTS``, default the test's temporary directory).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging.phantoms import make_chest_ct, make_radiograph
from imaging.series import read_series
from imaging.writers import ct_slice_datasets, radiograph_bytes
from serve import launch

pytestmark = pytest.mark.slow
KEY = "ui-test-key-0123456789"
HEADERS = {"X-API-Key": KEY}
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, DRIVER):
        if not (Path(path).exists() or shutil.which(Path(path).name)):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


def require_browser() -> None:
    why = missing()
    if why is None:
        return
    if os.environ.get("ANATOMIX_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ANATOMIX_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                "--disable-dev-shm-usage", "--no-proxy-server"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or DRIVER),
                              options=opts)  # fmt: skip
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(browser, exports, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    srv = launch.start(exports, log, env={"ANATOMIX_API_KEYS": KEY, "ANATOMIX_MAX_FILES": "64"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("ANATOMIX_UI_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def page(browser, server):
    """The page, opened without the key (what it showed then is ``browser.keyless_error``),
    then with the key typed in, as a user would."""
    browser.get(server.url + "/")
    _wait(browser, lambda d: "unauthorized" in _error(d), 30)
    browser.keyless_error = _error(browser)
    key = _css(browser, "#api-key")[0]
    key.send_keys(KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    return browser


def _wait(driver, predicate, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d))


def _css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _tab(driver, name):
    _css(driver, f'#tabs button[data-tab="{name}"]')[0].click()


def _upload(driver, selector, *paths):
    field = _css(driver, selector)[0]
    driver.execute_script("arguments[0].value = '';", field)
    field.send_keys("\n".join(str(p) for p in paths))


def _error(driver) -> str:
    box = _css(driver, "#error")[0]
    return "" if box.get_attribute("hidden") is not None else box.text


def test_the_page_needs_the_key_and_then_shows_the_models(page, server, shots):
    api = httpx.get(f"{server.url}/v1/models").json()
    assert page.keyless_error == f"{api['error']}: {api['detail']}"
    _tab(page, "models")
    _wait(page, lambda d: _css(d, ".card"), 30)
    models = httpx.get(f"{server.url}/v1/models", headers=HEADERS).json()["models"]
    cards = {c.get_attribute("data-model"): c.text for c in _css(page, ".card")}
    assert set(cards) == {m["id"] for m in models}
    for m in models:
        for o in m["outputs"]:
            for label in o.get("labels") or []:
                assert label in cards[m["id"]]
    page.save_screenshot(str(shots / "models.png"))


def test_radiograph_bars_equal_the_api(page, server, shots):
    _tab(page, "cxr")
    path = get_testdata_file("RG1_UNCR.dcm")
    _upload(page, "#cxr-files", path)
    _wait(page, lambda d: _css(d, ".bar") and _css(d, ".film img[src^='blob:']"))
    with open(path, "rb") as f:
        files = [("files", ("RG1_UNCR.dcm", f.read(), "application/dicom"))]
    api = httpx.post(f"{server.url}/v1/cxr/classify", files=files, headers=HEADERS, timeout=120)
    want = api.json()["results"][0]["findings"]
    shown = {}
    for bar in _css(page, ".bar"):
        shown.setdefault(bar.get_attribute("data-label-set"), {})[
            bar.get_attribute("data-label")] = float(bar.get_attribute("data-value"))  # fmt: skip
    assert shown == want
    widths = page.execute_script(
        "return [...document.querySelectorAll('.bar')].map(b => b.getBoundingClientRect().width"
        " / b.parentElement.getBoundingClientRect().width)")  # fmt: skip
    values = [v for s in want.values() for v in s.values()]
    np.testing.assert_allclose(widths, values, atol=0.01)  # the bars are drawn to scale
    assert _error(page) == ""
    page.save_screenshot(str(shots / "radiograph.png"))


def _dcm(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_ct_overlay_pixels_and_volume_equal_the_api(page, server, shots, tmp_path):
    ct = make_chest_ct(5, shape=(20, 48, 48), findings=("nodule",))
    slices = [_dcm(ds) for ds in ct_slice_datasets(ct.volume)]
    study = tmp_path / "study.zip"
    with zipfile.ZipFile(study, "w") as zf:
        for i, data in enumerate(slices):
            zf.writestr(f"s/{i}.dcm", data)
    _tab(page, "ct")
    _upload(page, "#ct-files", study)
    _wait(page, lambda d: _css(d, "#ct-canvas[data-slice]") and _css(d, ".ml"))
    files = [("files", ("study.zip", study.read_bytes(), "application/zip"))]
    seg = httpx.post(f"{server.url}/v1/ct/segment.dcm", files=files, headers=HEADERS, timeout=300)
    answer = httpx.post(f"{server.url}/v1/ct/segment", files=files, headers=HEADERS, timeout=300)
    assert seg.status_code == 200 and answer.status_code == 200
    labels = answer.json()["labels"]
    shown_ml = {c.get_attribute("data-label"): float(c.text) for c in _css(page, ".ml")}
    assert shown_ml == {k: v["volume_ml"] for k, v in labels.items()}
    d = int(_css(page, "#ct-canvas")[0].get_attribute("data-slice"))
    # slice d of the series in the order the service reads it (imaging's series reader)
    sop = read_series(slices).meta["sop_uids"][d]
    mask = _seg_mask(pydicom.dcmread(io.BytesIO(seg.content)), sop)
    assert mask.any(), "the page opened on a slice without the finding"
    rgb = _canvas(page, "#ct-canvas")
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 8
    assert np.array_equal(coloured, mask)
    page.save_screenshot(str(shots / "ct.png"))
    # keyboard scroll moves through the slices; the mask toggle takes the colour away
    _css(page, "#ct-canvas")[0].send_keys("\ue013")  # arrow up
    _wait(page, lambda dr: _css(dr, "#ct-canvas")[0].get_attribute("data-slice") == str(d + 1))
    _css(page, "#ct-overlay")[0].click()
    _wait(page, lambda dr: _css(dr, "#ct-canvas")[0].get_attribute("data-overlay") == "0")
    plain = _canvas(page, "#ct-canvas")
    assert ((plain.max(axis=2) - plain.min(axis=2)) <= 1).all()
    _css(page, "#ct-overlay")[0].click()


def _seg_mask(seg: pydicom.Dataset, sop_uid: str) -> np.ndarray:
    """The SEG's frame computed on the source slice ``sop_uid``, as bool (H, W)."""
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        if ref == sop_uid:
            return frame.astype(bool)
    raise AssertionError("no SEG frame for the slice shown")


def _canvas(driver, selector) -> np.ndarray:
    """The canvas's pixels as (H, W, 3) uint8, read in the page (getImageData)."""
    data = driver.execute_script(
        "const c = document.querySelector(arguments[0]);"
        "return c.toDataURL('image/png');", selector)  # fmt: skip
    from PIL import Image

    png = base64.b64decode(data.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _film_file(tmp_path: Path, name: str, shift: int) -> Path:
    film = make_radiograph(make_chest_ct(1, shape=(40, 96, 96)), size=(160, 140))
    pixels = np.roll(film.pixels, shift, axis=1)
    path = tmp_path / name
    path.write_bytes(radiograph_bytes(pixels, modality="CR"))
    return path


def test_a_click_on_a_marks_b_at_the_apis_matched_point(page, server, shots, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    a, b = _film_file(tmp_path, "a.dcm", 0), _film_file(tmp_path, "b.dcm", 12)
    _tab(page, "pair")
    _upload(page, "#pair-a", a)
    _upload(page, "#pair-b", b)
    _wait(page, lambda d: all(c.get_attribute("data-fit") for c in _css(d, "#pair-view canvas")))
    canvas = _css(page, "#pair-canvas-a")[0]
    ActionChains(page).move_to_element_with_offset(canvas, 20, -30).click().perform()
    _wait(page, lambda d: _css(d, "#pair-canvas-b[data-mark-row]"))
    point = [float(canvas.get_attribute(k)) for k in ("data-mark-row", "data-mark-col")]
    files = {"image_a": ("a.dcm", a.read_bytes(), "application/dicom"),
             "image_b": ("b.dcm", b.read_bytes(), "application/dicom")}  # fmt: skip
    api = httpx.post(f"{server.url}/v1/cxr/correspond", files=files, headers=HEADERS,
                     data={"points": f"{point[0]},{point[1]}"}, timeout=120).json()  # fmt: skip
    want = api["matches"][0]["b"]
    mark = _css(page, "#pair-canvas-b")[0]
    shown = [float(mark.get_attribute(k)) for k in ("data-mark-row", "data-mark-col")]
    np.testing.assert_allclose(shown, want, atol=1e-6)
    assert f"{api['matches'][0]['similarity']:.3f}" in _css(page, "#pair-similarity")[0].text
    _css(page, "#pair-lines")[0].click()
    _wait(page, lambda d: _css(d, "#pair-svg line"))
    page.save_screenshot(str(shots / "correspondence.png"))


def test_a_bad_file_shows_the_apis_error_and_the_page_keeps_working(page, server, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"not a DICOM file at all " * 40)
    files = [("files", ("notes.txt", bad.read_bytes(), "application/dicom"))]
    api = httpx.post(f"{server.url}/v1/cxr/classify", files=files, headers=HEADERS).json()
    _tab(page, "cxr")
    _upload(page, "#cxr-files", bad)
    _wait(page, lambda d: _error(d), 60)
    assert _error(page) == f"{api['error']}: {api['detail']}"
    _upload(page, "#cxr-files", get_testdata_file("RG1_UNCR.dcm"))
    _wait(page, lambda d: _css(d, ".bar") and _error(d) == "")


def test_the_jobs_view_lists_pacs_jobs(page, server, shots):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    boundary = "ui-test"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _dcm(ds)
            + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    r = httpx.post(f"{server.url}/dicomweb/studies", content=body,
                   headers=HEADERS | {"Content-Type": ctype})  # fmt: skip
    assert r.status_code == 200, r.text
    _tab(page, "jobs")
    _wait(page, lambda d: any(ds.StudyInstanceUID in row.text for row in _css(d, "#jobs tr")))
    page.save_screenshot(str(shots / "jobs.png"))
