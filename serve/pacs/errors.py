"""Why an incoming DICOM instance is refused, in the codes both receivers answer with."""

from __future__ import annotations

# DICOM PS3.4 Annex B.2.3 (C-STORE statuses) and PS3.18 §10.5 (STOW-RS FailureReason), which
# share the values: the STOW-RS answer and the C-STORE response carry the same number.
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
PROCESSING_FAILURE = 0x0110
# the instance's StudyInstanceUID differs from the one in the URL: PS3.18 names no code for
# this, so one of the A9xx "data set does not match" range, as other DICOMweb servers answer
STUDY_UID_MISMATCH = 0xA901


class Refused(Exception):
    """An instance was not stored: ``status`` is the DICOM failure code, ``detail`` a text safe
    to log and to answer with (no attribute value of the instance)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail
