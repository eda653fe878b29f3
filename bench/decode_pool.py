"""What decoding in a separate, killable process costs (issue #16, "measure which").

    python -m bench.decode_pool [--repeats 20]

The service decodes uploads in :class:`serve.decoder.DecoderPool` processes (killable on a
timeout or a gone client, memory-capped) instead of in its own threads. The baseline is what the
server did before and what a user would run: :func:`serve.inputs.decode_files` in-process on the
same spooled files (same limits, same code). Reported: the median time of each and their
difference, for pydicom-data's 7 MB chest CR and for a 64-slice 512 × 512 CT series.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from serve.decoder import DecoderPool  # noqa: E402
from serve.inputs import decode_files, decode_series_files  # noqa: E402
from serve.limits import Limits  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _ct_series(tmp: Path) -> list[tuple[str, Path]]:
    from imaging.phantoms import make_chest_ct
    from imaging.writers import ct_slice_datasets

    files = []
    for i, ds in enumerate(ct_slice_datasets(make_chest_ct(0, shape=(64, 512, 512)).volume)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = tmp / f"{i}.dcm"
        path.write_bytes(buf.getvalue())
        files.append((path.name, path))
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.decode_pool", description=__doc__.split("\n")[0]
    )
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    from pydicom.data import get_testdata_file

    limits = Limits()
    cr = [("RG1_UNCR.dcm", Path(get_testdata_file("RG1_UNCR.dcm")))]
    with tempfile.TemporaryDirectory() as tmp, DecoderPool(1, limits) as pool:
        series = _ct_series(Path(tmp))
        rows = [
            ("7 MB chest CR (RG1_UNCR)", lambda: decode_files(cr, limits),
             lambda: pool.images(cr), args.repeats),
            ("64-slice 512² CT series", lambda: decode_series_files(series, limits),
             lambda: pool.series(series), max(3, args.repeats // 4)),
        ]  # fmt: skip
        print(f"{'input':28s} {'in-process':>11s} {'pool':>9s} {'difference':>11s} {'ratio':>6s}")
        for name, inproc, pooled, n in rows:
            a, b = _median_ms(inproc, n), _median_ms(pooled, n)
            print(f"{name:28s} {a:8.1f} ms {b:6.1f} ms {b - a:+8.1f} ms {b / a:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
