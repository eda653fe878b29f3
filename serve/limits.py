"""Every per-request bound of the service in one place, the same for every endpoint.

Each bound is enforced while reading or decoding, before the work it guards: the body is counted
as it streams, archives and compressed files are inflated under a ratio and an absolute cap, and
pixel counts are checked from the header before any pixel is decoded. Environment overrides are
named beside each field; a malformed value stops the server at start-up (:class:`ConfigError`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

KiB, MiB = 1 << 10, 1 << 20


class ConfigError(ValueError):
    """A malformed ``ANATOMIX_*`` setting; the server refuses to start and says which."""


def env_number(env, name: str, *, positive: bool) -> float | None:
    """The finite number in ``env[name]`` (None if unset); :class:`ConfigError` naming the
    variable if it is not a number, or not positive (``positive``) / negative."""
    raw = env.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not (0 < value if positive else 0 <= value) or not value < float("inf"):
        kind = "positive" if positive else "non-negative"
        raise ConfigError(f"{name} must be a {kind} number, got {raw!r}")
    return value


@dataclass(frozen=True)
class Limits:
    """Per-request limits (``ANATOMIX_*`` override in brackets, in the unit it names)."""

    #: request body, counted as it arrives, chunked or not [ANATOMIX_MAX_UPLOAD_MB]
    max_body_bytes: int = 512 * MiB
    #: files in one request, zip members included; also slices per series [ANATOMIX_MAX_FILES]
    max_files: int = 1000
    #: form parts of any kind in one request (files and text fields)
    max_parts: int = 1024
    #: one text field's value (``points``, ``model``, ...)
    max_field_bytes: int = 64 * KiB
    #: a part's headers together (names, file name, content type)
    max_part_header_bytes: int = 16 * KiB
    #: everything one request may inflate to: zip members, gzip files, deflated DICOM
    #: [ANATOMIX_MAX_UNZIPPED_MB]
    max_inflated_bytes: int = 2048 * MiB
    #: inflated ÷ compressed size of one member or file beyond ``inflate_floor_bytes``
    #: [ANATOMIX_MAX_INFLATE_RATIO]. Real DICOM measured 1.1-2.9× (pydicom-data, phantoms) and
    #: 24.7× (liver.dcm); 32 keeps those and lets a 5 MB gzip bomb inflate only 160 MB before its
    #: 413 (at 100 it took 1.4 s and 0.5 GB on this 2-core machine: bench/RESULTS.md)
    max_inflate_ratio: int = 32
    inflate_floor_bytes: int = 4 * MiB
    #: rows × columns × frames of one image, checked before decoding [ANATOMIX_MAX_IMAGE_MPX]
    max_image_pixels: int = 64 * MiB
    #: decoded pixels of one request together (a study) [ANATOMIX_MAX_STUDY_MPX]
    max_study_pixels: int = 256 * MiB
    #: seconds for the whole body to arrive [ANATOMIX_UPLOAD_TIMEOUT_S]
    upload_timeout_s: float = 120.0
    #: seconds a request's decoding may take before it is killed [ANATOMIX_DECODE_TIMEOUT_S]
    decode_timeout_s: float = 60.0
    #: address space of one decoding process [ANATOMIX_DECODE_MEMORY_MB]
    decode_memory_bytes: int = 3072 * MiB

    def inflate_budget(self, compressed: int, left: int) -> int:
        """Bytes ``compressed`` input may inflate to, ``left`` being the request's remaining cap."""
        return min(left, max(self.max_inflate_ratio * compressed, self.inflate_floor_bytes))

    @classmethod
    def from_env(cls, env=None) -> Limits:
        """The defaults, with the environment's overrides; :class:`ConfigError` if one is not a
        positive number."""
        env = os.environ if env is None else env
        scale = {
            "max_body_bytes": ("ANATOMIX_MAX_UPLOAD_MB", MiB),
            "max_files": ("ANATOMIX_MAX_FILES", 1),
            "max_inflated_bytes": ("ANATOMIX_MAX_UNZIPPED_MB", MiB),
            "max_inflate_ratio": ("ANATOMIX_MAX_INFLATE_RATIO", 1),
            "max_image_pixels": ("ANATOMIX_MAX_IMAGE_MPX", MiB),
            "max_study_pixels": ("ANATOMIX_MAX_STUDY_MPX", MiB),
            "upload_timeout_s": ("ANATOMIX_UPLOAD_TIMEOUT_S", 1),
            "decode_timeout_s": ("ANATOMIX_DECODE_TIMEOUT_S", 1),
            "decode_memory_bytes": ("ANATOMIX_DECODE_MEMORY_MB", MiB),
        }
        values = {}
        for f in fields(cls):
            if f.name not in scale:
                continue
            var, unit = scale[f.name]
            number = env_number(env, var, positive=True)
            if number is None:
                continue
            values[f.name] = number * unit if f.type == "float" else int(number * unit)
        limits = cls(**values)
        parts = max(limits.max_parts, limits.max_files + 8)  # the files and a few text fields
        return cls(**{**limits.__dict__, "max_parts": parts})

    def to_json(self) -> dict:
        """For the decoding process (plain numbers)."""
        return dict(self.__dict__)
