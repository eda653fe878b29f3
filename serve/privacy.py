"""Keep patient identifiers out of the server's log and answers.

Uploaded DICOM can carry identifiers in any text element, and a damaged length can make one
element swallow its neighbours, so no value read from an upload is trusted to be harmless:
- log records of third-party libraries that quote DICOM values (pydicom, highdicom, pynetdicom)
  are reduced to their source location; exception messages in any traceback are dropped
  (frames are kept); Python warnings are logged by category and location only;
- UIDs and the Modality returned or quoted are checked against their DICOM value
  representations (UI, CS) first, so a swallowed name cannot ride along.
"""

from __future__ import annotations

import logging
import re
import traceback
import warnings

from .errors import RequestError

#: loggers whose messages may quote attribute values (and their children)
QUOTING_LOGGERS = ("pydicom", "highdicom", "pynetdicom", "py.warnings")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
#: DICOM PS3.3 C.7.3.1.1.1 Modality defined terms (current and retired): only these are echoed
MODALITY_TERMS = frozenset(
    "AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DMS DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC "
    "HD IO IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT "
    "PA PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN "
    "RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC "
    "AS CD CF CP CS DD DF DM DR DS EC FA FS LP MA MS OPR ST VF".split()
)


def safe_traceback(exc_info) -> str:
    """The traceback's frames and exception types, without any exception message."""
    etype, value, tb = exc_info
    lines = ["Traceback (most recent call last):\n", *traceback.format_tb(tb)]
    chain = []
    while value is not None and len(chain) < 8:
        chain.append(type(value).__qualname__)
        value = value.__cause__ or value.__context__
    lines.append(f"{' <- '.join(chain) or getattr(etype, '__name__', '?')} (message withheld)")
    return "".join(lines)


def _quoting(name: str) -> bool:
    return any(name == q or name.startswith(q + ".") for q in QUOTING_LOGGERS)


_base_factory = logging.getLogRecordFactory()


def _record_factory(*args, **kwargs) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    if _quoting(record.name):
        record.msg = f"{record.name}: message withheld (it may quote DICOM attribute values)"
        record.args = ()
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = safe_traceback(record.exc_info)
        record.exc_info = None
    return record


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("anatomix.serve").warning(
        "%s from %s:%d (message withheld: it may quote DICOM attribute values)",
        getattr(category, "__name__", "Warning"), filename, lineno,
    )  # fmt: skip


def install() -> None:
    """Filter every log record and warning of this process (idempotent)."""
    if logging.getLogRecordFactory() is not _record_factory:
        logging.setLogRecordFactory(_record_factory)
    warnings.showwarning = _showwarning


def is_uid(value: str) -> bool:
    """Whether ``value`` is a DICOM UID: dot-separated digit runs, at most 64 characters."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def checked_uid(value: str, what: str) -> str:
    """``value`` if it is a DICOM UID (digits and dots, at most 64 characters) or empty;
    otherwise a 422 naming only the attribute."""
    value = (value or "").strip().rstrip("\x00").strip()
    if value and not is_uid(value):
        raise RequestError(
            422, "invalid_uid",
            f"{what} is not a valid DICOM UID (digits and dots, at most 64 characters)",
        )  # fmt: skip
    return value


def checked_modality(value: str) -> str | None:
    """The Modality if it is one of DICOM's defined terms, else None (so that a damaged element
    that swallowed its neighbours, or any free text, is never quoted)."""
    value = (value or "").strip()
    return value if value in MODALITY_TERMS else None
