"""The sandboxed decoder pool (issue #16): answers equal in-process decoding, every bad input is
its 4xx, bombs stop fast in little memory, and a slow, cancelled, memory-hungry or killed job
costs one request and one process, never the pool."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging.dicom import read_image
from imaging.series import read_series
from serve.decode_worker import _LEN
from serve.decoder import DecoderPool, _Died
from serve.errors import Cancelled, RequestError
from serve.limits import Limits

from .conftest import zip_bytes

MiB = 1 << 20
HOOKS = "ANATOMIX_DECODER_TEST_HOOKS"
RG, CT = get_testdata_file("RG1_UNCR.dcm"), get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module", autouse=True)
def hooks():
    """The children of this module's pools honour the test-only ops (sleep, alloc)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOOKS, "1")
        yield


@pytest.fixture(scope="module")
def pool(hooks):
    with DecoderPool(2, Limits(), name="test") as p:
        yield p


def _refused(fn, *args, **kw) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args, **kw)
    return info.value


def _write(tmp_path: Path, name: str, data: bytes) -> tuple[str, Path]:
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}-upload"  # spool names, not the client's
    path.write_bytes(data)
    return name, path


def _same_image(got, want) -> None:
    assert got.pixels.dtype == want.pixels.dtype
    np.testing.assert_array_equal(got.pixels, want.pixels)
    for field in ("spacing", "modality", "photometric", "window_center", "window_width",
                  "study_uid", "series_uid", "sop_uid", "meta"):  # fmt: skip
        assert getattr(got, field) == getattr(want, field), field


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- answers equal in-process decoding -----------------------------------------------------------


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "CT_small.dcm", "JPEG2000.dcm", "emri_small.dcm"])
def test_real_files_decode_like_read_image(pool, name):
    path = get_testdata_file(name)
    [(got_name, image)] = pool.images([(name, path)])
    assert got_name == name
    _same_image(image, read_image(path))
    if name == "RG1_UNCR.dcm":  # pydicom's own values, MONOCHROME1 inverted (higher is denser)
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation == "MONOCHROME1"
        np.testing.assert_array_equal(image.pixels, (1 << ds.BitsStored) - 1 - ds.pixel_array)


@pytest.mark.parametrize("prepared", [True, False])
def test_radiographs_are_prepared_in_the_process_like_in_process(pool, prepared):
    from imaging.distribution import unit_features
    from imaging.preprocess import ark_cxr, prepare_radiograph, radiograph_to_unit

    pp = ark_cxr(64)
    unit = radiograph_to_unit(read_image(RG))
    (items, ms) = pool.radiographs([("cr.dcm", RG)], pp.to_dict() if prepared else None)
    [(name, image, feats, hw)] = items
    assert name == "cr.dcm" and hw == unit.shape and ms >= 0
    # the features go through a float32 resize (matrix products whose summation order depends on
    # the process's BLAS threads and buffer alignment): a decoding process may differ in the last
    # bits (CI saw 1.2e-8 relative); the input guard's thresholds are far coarser
    assert feats == pytest.approx(unit_features(unit), rel=1e-6, abs=1e-9)
    want = prepare_radiograph(unit, pp)[0] if prepared else unit
    np.testing.assert_array_equal(image.pixels, want)
    ref = read_image(RG)
    assert (image.modality, image.sop_uid) == (ref.modality, ref.sop_uid)


def test_zip_members_and_gzip_files_keep_their_order_and_names(pool, tmp_path):
    import gzip

    ct, rg = Path(CT).read_bytes(), Path(RG).read_bytes()
    files = [
        _write(tmp_path, "a.dcm.gz", gzip.compress(ct)),
        _write(tmp_path, "b.zip", zip_bytes({"x/one.dcm": rg, "two.dcm": ct})),
        _write(tmp_path, "c.dcm", rg),
    ]
    got = pool.images(files)
    assert [n for n, _ in got] == ["a.dcm.gz", "b.zip/one.dcm", "b.zip/two.dcm", "c.dcm"]
    for (_, image), ref in zip(got, (CT, RG, CT, RG), strict=True):
        _same_image(image, read_image(ref))


def _series(seed: int, shape=(24, 48, 48)) -> list[bytes]:
    from imaging.phantoms import make_chest_ct
    from imaging.writers import ct_series_bytes

    return ct_series_bytes(make_chest_ct(seed, shape=shape).volume)


def test_series_as_files_and_as_zip_equals_read_series(pool, tmp_path):
    slices = _series(5)
    want = read_series(slices)
    loose = [_write(tmp_path, f"{i}.dcm", s) for i, s in enumerate(slices[::-1])]
    zipped = [_write(tmp_path, "s.zip", zip_bytes({f"{i}.dcm": s for i, s in enumerate(slices)}))]
    for files in (loose, zipped):
        vol = pool.series(files)
        np.testing.assert_array_equal(vol.voxels, want.voxels)
        np.testing.assert_array_equal(vol.affine, want.affine)
        assert vol.voxels.dtype == np.float32 and vol.spacing == want.spacing
        selection = vol.meta.pop("selection")
        assert selection == {"chosen": want.series_uid, "rejected": {}}  # the only series sent
        assert (vol.modality, vol.series_uid, vol.study_uid, vol.meta) == (
            want.modality, want.series_uid, want.study_uid, want.meta)  # fmt: skip
    mixed = loose[:4] + [_write(tmp_path, "o.dcm", _series(6, (24, 56, 56))[0])]
    err = _refused(pool.series, mixed)  # two series, neither a volume under the CT rules
    assert (err.status, err.code) == (422, "no_suitable_series")
    import pydicom

    uid = pydicom.dcmread(io.BytesIO(slices[0])).SeriesInstanceUID
    other = pydicom.dcmread(io.BytesIO(_series(6, (24, 56, 56))[0]))
    other.SeriesInstanceUID = uid  # one series whose slices disagree in size
    buf = io.BytesIO()
    other.save_as(buf, enforce_file_format=True)
    err = _refused(pool.series, loose[:4] + [_write(tmp_path, "x.dcm", buf.getvalue())])
    assert (err.status, err.code) == (422, "inconsistent_series")


def test_series_headers_for_a_seg_are_the_sources_without_pixels(pool, tmp_path):
    """The server never parses an upload: the SEG's source headers come from the child."""
    import pydicom

    from imaging.fuzz.mutators import deflated

    slices = _series(7)
    slices[3] = deflated(slices[3])  # a deflated slice's header comes back plain
    files = [_write(tmp_path, f"{i}.dcm", s) for i, s in enumerate(slices)]
    vol, heads = pool.series(files, headers=True)
    assert len(heads) == len(slices)
    np.testing.assert_array_equal(vol.voxels, read_series(slices).voxels)
    for head, raw in zip(heads, slices, strict=True):
        got = pydicom.dcmread(io.BytesIO(head))
        want = pydicom.dcmread(io.BytesIO(raw), force=True)
        assert "PixelData" not in got and got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        for keyword in ("SOPInstanceUID", "PatientID", "Rows", "ImagePositionPatient"):
            assert got.get(keyword) == want.get(keyword), keyword
    assert len(heads[3]) < len(slices[0]) // 2  # no pixel data travelled


# -- bad input: its 4xx --------------------------------------------------------------------------


def _bad_inputs() -> dict:
    ct = Path(CT).read_bytes()
    no_pixels = Path(get_testdata_file("ExplVR_LitEndNoMeta.dcm")).read_bytes()
    unsafe = zip_bytes({"ok.dcm": ct, "../evil.dcm": ct})
    six = zip_bytes({f"{i}.dcm": b"x" for i in range(6)})
    return {
        "not_dicom": ([("x.dcm", b"hello, this is not DICOM" * 20)], 400, "not_dicom"),
        "empty": ([("x.dcm", b"")], 400, "not_dicom"),
        "truncated": ([("x.dcm", ct[: len(ct) - 20000])], 400, "corrupt_file"),
        "no_pixels": ([("x.dcm", no_pixels)], 422, "no_pixel_data"),
        "unsafe_path": ([("a.zip", unsafe)], 400, "unsafe_archive"),
        "broken_zip": ([("a.zip", b"PK\x03\x04garbage")], 400, "bad_archive"),
        "too_many": ([("a.zip", six)], 413, "too_many_files"),
        "too_many_loose": ([(f"{i}.dcm", b"x") for i in range(6)], 413, "too_many_files"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_gets_its_4xx(case, tmp_path):
    files, status, code = _bad_inputs()[case]
    with DecoderPool(1, Limits(max_files=5)) as small:
        paths = [_write(tmp_path, n, d) for n, d in files]
        err = _refused(small.images, paths)
        assert (err.status, err.code) == (status, code), err.detail
        assert small.images([("ok.dcm", CT)])[0][1].pixels.shape == (128, 128)  # still serving


def test_image_and_study_pixel_limits(tmp_path):
    limits = Limits(max_image_pixels=20000, max_study_pixels=40000)  # CT_small: 16384 pixels
    with DecoderPool(1, limits) as small:
        assert len(small.images([("a", CT), ("b", CT)])) == 2
        err = _refused(small.images, [("a", CT), ("b", CT), ("c", CT)])
        assert (err.status, err.code) == (413, "study_too_large")
        err = _refused(small.images, [("cr", RG)])
        assert (err.status, err.code) == (413, "image_too_large")


# -- bombs: refused fast, in little memory, parent and child ---------------------------------------


def _segment(n: int) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(bytes(n)) + deflater.flush(zlib.Z_SYNC_FLUSH)


def _gzip_bomb(mib: int) -> bytes:
    """``mib`` MiB of zeros in ~1 kB/MiB, built without compressing them (the trailer is bogus:
    a reader that stops at its limit never gets there)."""
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    return b"\x1f\x8b\x08\x00\0\0\0\0\x02\xff" + _segment(MiB) * mib + final + bytes(8)


def _zip_bomb(mib: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("ct/0.dcm")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as member:
            block = bytes(MiB)
            for _ in range(mib):
                member.write(block)
    return buf.getvalue()


def _deflate_bomb(mib: int) -> bytes:
    from imaging.fuzz.mutators import deflated

    return deflated(Path(CT).read_bytes(), padding=mib * MiB)[132:]  # file meta at byte 0


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    "bomb, inflated, code",
    [
        (lambda: _zip_bomb(200), 200 * MiB, "upload_too_large"),
        (lambda: _deflate_bomb(1024), 1024 * MiB, "image_too_large"),  # ~1 MB each
        (lambda: _gzip_bomb(1024), 1024 * MiB, "image_too_large"),
    ],
    ids=["zip_member_ratio", "deflated_no_preamble", "dcm_gz"],
)
def test_bombs_are_refused_fast_in_little_memory(bomb, inflated, code, tmp_path):
    data = bomb()
    assert len(data) < inflated // 500
    files = [_write(tmp_path, "x.zip" if code == "upload_too_large" else "x.dcm", data)]
    with DecoderPool(1, Limits()) as fresh:
        [pid] = fresh.pids()
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            err = _refused(fresh.images, files)
            seconds = time.perf_counter() - t0
            parent_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        child_peak = _peak_rss(pid)
    assert (err.status, err.code) == (413, code), err.detail
    assert seconds < 1.0, seconds
    assert parent_peak < 4 * MiB, parent_peak  # the parent never holds the upload
    assert child_peak < 256 * MiB, child_peak  # at most the file's ratio budget, not the bomb


# -- time, cancellation, memory, crashes: one request and one process pay -------------------


def test_a_slow_job_is_killed_at_its_timeout_and_the_pool_serves_on(pool):
    before = set(pool.pids())
    t0 = time.perf_counter()
    err = _refused(pool._run, "sleep", [], timeout=0.5, seconds=60)
    assert time.perf_counter() - t0 < 1.5
    assert (err.status, err.code) == (504, "decode_timeout") and "0.5 s" in err.detail
    killed = before - set(pool.pids())
    assert len(killed) == 1 and all(_gone(pid) for pid in killed)
    _same_image(pool.images([("cr", RG)])[0][1], read_image(RG))
    with DecoderPool(1, Limits(decode_timeout_s=0.3)) as short:  # the limit is the default
        err = _refused(short._run, "sleep", [], seconds=60)
        assert (err.status, err.code) == (504, "decode_timeout")


def _in_thread(fn, *args, **kw):
    """Run ``fn`` in a thread; returns a getter for its result or exception."""
    out = {}

    def run():
        try:
            out["value"] = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()

    def result(timeout=10):
        t.join(timeout)
        assert not t.is_alive()
        return out

    return result


def test_cancellation_kills_the_child_promptly():
    with DecoderPool(1, Limits()) as one:
        [pid] = one.pids()
        cancelled = threading.Event()
        result = _in_thread(one._run, "sleep", [], seconds=60, cancelled=cancelled)
        time.sleep(0.3)
        t0 = time.perf_counter()
        cancelled.set()
        out = result()
        assert isinstance(out.get("error"), Cancelled), out
        assert time.perf_counter() - t0 < 0.5
        assert _gone(pid)
        _same_image(one.images([("ct", CT)])[0][1], read_image(CT))  # the replacement serves


def test_a_job_past_the_memory_cap_is_a_413_and_the_pool_serves_on():
    with DecoderPool(1, Limits(decode_memory_bytes=512 * MiB)) as capped:
        err = _refused(capped._run, "alloc", [], bytes=1 << 30)
        assert (err.status, err.code) == (413, "image_too_large")
        assert "memory" in err.detail
        _same_image(capped.images([("cr", RG)])[0][1], read_image(RG))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_memory_cap_too_small_to_decode_anything_stops_the_start():
    from serve.limits import ConfigError

    with pytest.raises(ConfigError, match="ANATOMIX_DECODE_MEMORY_MB"):
        DecoderPool(1, Limits(decode_memory_bytes=32 * MiB))


def test_a_child_killed_mid_job_is_a_422_and_is_replaced():
    with DecoderPool(1, Limits()) as one:
        [pid] = one.pids()
        result = _in_thread(one._run, "sleep", [], seconds=60)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer or a crashing codec would
        err = result().get("error")
        assert isinstance(err, RequestError) and (err.status, err.code) == (422, "undecodable")
        _same_image(one.images([("ct", CT)])[0][1], read_image(CT))
        assert one.pids() != [pid]


def test_a_child_killed_while_idle_costs_no_request():
    with DecoderPool(1, Limits()) as one:
        [pid] = one.pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        _same_image(one.images([("ct", CT)])[0][1], read_image(CT))


def test_busy_when_no_child_frees_in_time():
    with DecoderPool(1, Limits()) as one:
        result = _in_thread(one._run, "sleep", [], seconds=1.0)  # it prints on fd 1, too
        time.sleep(0.2)
        err = _refused(one.images, [("ct", CT)], timeout=0.3)
        assert (err.status, err.code, err.headers) == (503, "busy", {"Retry-After": "1"})
        assert "value" in result()


def test_children_are_recycled_after_max_jobs():
    with DecoderPool(1, Limits(), max_jobs=2) as one:
        first = one.pids()
        one.images([("ct", CT)])
        assert one.pids() == first
        one.images([("ct", CT)])
        _same_image(one.images([("ct", CT)])[0][1], read_image(CT))  # waits for the new one
        assert one.pids() != first and all(_gone(p) for p in first)


def test_many_threads_share_a_small_pool(pool):
    refs = {RG: read_image(RG), CT: read_image(CT)}

    def one(i):
        path = (RG, CT)[i % 2]
        [(_, image)] = pool.images([(f"{i}.dcm", path)])
        return path, image

    with ThreadPoolExecutor(8) as ex:
        for path, image in ex.map(one, range(24)):
            _same_image(image, refs[path])


# -- the parent trusts no child --------------------------------------------------------------------


class _FakeChild:
    """A pipe the test writes answers into, in place of a child's stdout."""

    def __init__(self):
        self.fd_out, self._w = os.pipe()
        os.set_blocking(self.fd_out, False)

    def say(self, header: bytes, payload: bytes = b"") -> _FakeChild:
        os.write(self._w, _LEN.pack(len(header)) + header + payload)
        return self

    def close(self) -> None:
        os.close(self.fd_out)
        os.close(self._w)


@pytest.mark.parametrize(
    "header",
    [
        b'{"ok": true, "arrays": [{"dtype": "|O", "shape": [2], "nbytes": 16}]}',
        b'{"ok": true, "arrays": [{"dtype": "<f4", "shape": [4], "nbytes": 8}]}',
        b'{"ok": true, "arrays": [{"dtype": "<f4", "shape": [-1, 2], "nbytes": -8}]}',
        b'{"ok": true, "arrays": [{"dtype": "<f4", "shape": [100000, 100000], '
        b'"nbytes": 40000000000}]}',
        b'{"ok": true}',
        b"[1, 2]",
        b"\xff\xfe not json",
    ],
)
def test_malformed_answers_are_refused_before_allocating(pool, header):
    child = _FakeChild().say(header, bytes(64))
    with pytest.raises(_Died):
        pool._answer(child, time.monotonic() + 2, None)
    child.close()


def test_a_too_long_frame_is_refused(pool):
    child = _FakeChild()
    os.write(child._w, _LEN.pack(1 << 30))
    with pytest.raises(_Died):
        pool._answer(child, time.monotonic() + 2, None)
    child.close()


# -- the children die with the server ----------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_children_die_with_a_killed_server():
    script = (
        "import sys, time\n"
        "from serve.decoder import DecoderPool\n"
        "from serve.limits import Limits\n"
        "pool = DecoderPool(2, Limits())\n"
        "print(*pool.pids(), flush=True)\n"
        "time.sleep(60)\n"
    )
    root = Path(__file__).resolve().parents[2]
    server = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE)
    try:
        pids = [int(p) for p in server.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
    finally:
        server.kill()  # SIGKILL: no chance to close the pool
        server.wait()
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids)
