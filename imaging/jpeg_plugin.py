"""A pydicom decoding plugin for JPEG Lossless (Process 14, and its Selection Value 1 form) and
12-bit JPEG Extended, through imagecodecs (BSD-3: liblj92 and libjpeg-turbo), registered when
:mod:`imaging.dicom` is imported.

Without it pydicom's only decoder for these syntaxes is pylibjpeg-libjpeg, which is GPL-3.0 and
so an optional extra of this Apache-2.0 package (README, "DICOM decoding"). pydicom's GDCM plugin
covers them too but aborts the whole process on some malformed streams (found by
tests/imaging/test_fuzz.py), which a server decoding uploads cannot accept. 8-bit JPEG Baseline
and Extended stay with Pillow. Lossless decoding is bit for bit; lossy 12-bit differs from
libjpeg's inverse DCT by at most a grey level (tests/imaging/test_jpeg_plugins.py).
"""

from __future__ import annotations

import importlib.util

from pydicom import uid

SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGExtended12Bit)
#: what pydicom reports as missing when imagecodecs is not installed
DECODER_DEPENDENCIES = {syntax: ("imagecodecs>=2024.1",) for syntax in SYNTAXES}
LABEL = "imagecodecs"


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin check: one of :data:`SYNTAXES`, with imagecodecs' codec installed."""
    if transfer_syntax not in SYNTAXES or importlib.util.find_spec("imagecodecs") is None:
        return False
    import imagecodecs

    codec = imagecodecs.JPEG8 if transfer_syntax == uid.JPEGExtended12Bit else imagecodecs.LJPEG
    return bool(codec.available)


def _decode_frame(src: bytes, runner) -> bytes:
    """One JPEG frame → its samples, colour-by-pixel, as little-endian bytes of the dataset's
    allocation (signed data keeps its bits; pydicom views them with the dataset's dtype)."""
    import imagecodecs

    if runner.transfer_syntax == uid.JPEGExtended12Bit:
        if runner.samples_per_pixel != 1:  # no colour transform is guessed: other plugins try
            raise NotImplementedError("the imagecodecs plugin decodes greyscale 12-bit JPEG only")
        pixels = imagecodecs.jpeg8_decode(src)
    else:
        pixels = imagecodecs.ljpeg_decode(src)
    if runner.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)
    width = 1 if runner.bits_allocated <= 8 else 2
    return pixels.astype(f"<u{width}", copy=False).tobytes()


def register() -> None:
    """Add the plugin to pydicom's decoders of :data:`SYNTAXES`, once (after pydicom's own)."""
    from pydicom.pixels import get_decoder

    for syntax in SYNTAXES:
        try:
            get_decoder(syntax).add_plugin(LABEL, (__name__, "_decode_frame"))
        except ValueError:  # already added (pydicom refuses a second plugin of the same label)
            pass
