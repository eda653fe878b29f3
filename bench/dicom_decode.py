"""Cost of ``imaging.dicom.read_image`` relative to pydicom's bare ``dcmread(...).pixel_array``.

Both decode the same real files from pydicom-data in one run, interleaved, so the printed ratio is
comparable on a noisy machine. The overhead is the validation, guards and float32 transforms.

    python bench/dicom_decode.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import pydicom
from pydicom.data import get_testdata_file

from imaging.dicom import read_image

FILES = [
    "RG1_UNCR.dcm",
    "RG1_UNCI.dcm",
    "RG1_J2KR.dcm",
    "693_J2KR.dcm",
    "CT_small.dcm",
    "JPEG-LL.dcm",
]


def _time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="best of N timings per file")
    args = parser.parse_args()
    print(f"{'file':<16} {'pydicom ms':>11} {'read_image ms':>14} {'ratio':>7}")
    for name in FILES:
        path = get_testdata_file(name)
        base = _time(lambda p=path: pydicom.dcmread(p).pixel_array, args.repeat)
        ours = _time(lambda p=path: read_image(p), args.repeat)
        print(f"{name:<16} {base * 1e3:>11.1f} {ours * 1e3:>14.1f} {ours / base:>7.2f}")


if __name__ == "__main__":
    main()
