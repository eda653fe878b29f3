"""Typed errors of the imaging layer.

Every failure to turn a file into pixels raises a subclass of :class:`ImagingError`, so callers
(the REST service maps them to HTTP 4xx) can catch one class. Messages name the problem and what
to do about it, and never contain patient identifiers: only technical attributes (transfer
syntax, dimensions, tag keywords) go into them.
"""

from __future__ import annotations


class ImagingError(Exception):
    """Base class of every error raised while reading or validating an image."""

    #: short machine-readable code, used as the ``error`` field of an HTTP error body
    code = "imaging_error"


class NotDicomError(ImagingError):
    """The input is not a DICOM file (no preamble/DICM prefix and no parsable data elements)."""

    code = "not_dicom"


class CorruptFileError(ImagingError):
    """The file is DICOM but truncated or corrupt: it cannot be parsed or its pixels decoded."""

    code = "corrupt_file"


class NoPixelDataError(ImagingError):
    """The dataset parses but holds no image (e.g. a structured report or a DICOMDIR)."""

    code = "no_pixel_data"


class UnsupportedError(ImagingError):
    """The image is valid DICOM but uses something this layer does not support."""

    code = "unsupported"


class UnsupportedPhotometricError(UnsupportedError):
    """The photometric interpretation (colour model) is not supported."""

    code = "unsupported_photometric"


class UnsupportedTransferSyntaxError(UnsupportedError):
    """No installed decoder handles the file's transfer syntax."""

    code = "unsupported_transfer_syntax"


class ImageTooLargeError(ImagingError):
    """The declared image size exceeds the configured limit (checked before decoding)."""

    code = "image_too_large"


class InconsistentSeriesError(ImagingError):
    """Series files disagree (size, spacing, orientation, mixed series) or cannot be ordered."""

    code = "inconsistent_series"


class UnsupportedFormatError(ImagingError):
    """A volume file whose format (by extension or content) is not one this layer reads."""

    code = "unsupported_format"
