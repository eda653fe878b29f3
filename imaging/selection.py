"""Series selection as data: which series of a study a model runs on, and why the others were not
chosen (issue #20; MONAI Deploy's selection rules are the model).

A rule set is YAML (the defaults ship beside this module: ``selection_ct.yaml``,
``selection_radiograph.yaml``; a deployment passes its own file). Each series of the study is
summarised from its decoded instances (:class:`SeriesSummary`: technical attributes only, no
patient identifiers), checked against the rules' hard conditions in a fixed order — the first
failure is its recorded reason — and the survivors are ranked by the rules' preferences.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from .image import Image

HERE = Path(__file__).resolve().parent
#: input kind → the rule file shipped with anatomix
DEFAULT_RULES = {"ct": HERE / "selection_ct.yaml", "radiograph": HERE / "selection_radiograph.yaml"}


@dataclass(frozen=True)
class SeriesSummary:
    """What selection looks at in one series (all non-identifying).

    Attributes:
        series_uid: SeriesInstanceUID.
        modality: Modality of its first instance.
        sop_class_uid: SOPClassUID of its first instance.
        image_type: ImageType values of its first instance (ORIGINAL, PRIMARY, AXIAL, ...).
        instances: number of files.
        slices: number of 2-D images (frames counted).
        slice_thickness: median SliceThickness in mm, None where no instance states it.
        spacing_regular: whether the slice positions are evenly spaced along the slice normal
            (within 10 % of the median gap); None for fewer than three positioned slices.
        body_part: BodyPartExamined of its first instance ("" when absent).
        view_positions: ViewPosition values of its instances ("" when absent).
    """

    series_uid: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    instances: int
    slices: int
    slice_thickness: float | None
    spacing_regular: bool | None
    body_part: str
    view_positions: tuple[str, ...]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def summarise(images: Iterable[Image]) -> list[SeriesSummary]:
    """One :class:`SeriesSummary` per SeriesInstanceUID, in the order series first appear."""
    groups: dict[str, list[Image]] = defaultdict(list)
    for image in images:
        groups[image.series_uid].append(image)
    return [_summary(uid, items) for uid, items in groups.items()]


_UID = re.compile(r"[0-9.]{1,64}")
_CODE = re.compile(r"[A-Z0-9_ ]{0,16}")


def _summary(uid: str, items: list[Image]) -> SeriesSummary:
    """Values that reach a reason are kept only when they have their VR's syntax (a UID, a code
    string), so free text — an identifier planted in a tag — never does."""
    first = items[0]
    modality = first.modality.strip().upper()
    sop_class = str(first.meta.get("sop_class_uid", "")).strip()
    thickness = [t for i in items if (t := i.meta.get("slice_thickness")) is not None]
    return SeriesSummary(
        series_uid=uid,
        modality=modality if _CODE.fullmatch(modality) else "invalid",
        sop_class_uid=sop_class if _UID.fullmatch(sop_class) else "invalid",
        image_type=tuple(first.meta.get("image_type") or ()),
        instances=len(items),
        slices=sum(int(i.meta.get("number_of_frames") or 1) for i in items),
        slice_thickness=float(statistics.median(thickness)) if thickness else None,
        spacing_regular=_regular(items),
        body_part=str(first.meta.get("body_part", "")),
        view_positions=tuple(sorted({str(i.meta.get("view_position", "")) for i in items})),
    )


def _regular(items: list[Image], tolerance: float = 0.1) -> bool | None:
    """Evenly spaced slice positions along the normal of the first slice's orientation."""
    orient = items[0].meta.get("image_orientation")
    positions = [i.meta.get("image_position") for i in items]
    if not orient or len(orient) != 6 or len(items) < 3 or not all(positions):
        return None
    normal = np.cross(np.asarray(orient[:3], float), np.asarray(orient[3:], float))
    depth = np.sort(np.asarray(positions, float) @ normal)
    gaps = np.diff(depth)
    median = float(np.median(gaps))
    if median <= 0:
        return False
    return bool(np.all(np.abs(gaps - median) <= tolerance * median))


def _upper(values) -> set[str]:
    return {str(v).strip().upper() for v in values}


@dataclass
class Rules:
    """A rule set (the YAML file's keys; an empty list or None means "any").

    Hard conditions, checked in this order: ``modalities``, ``reject_sop_classes`` (UID prefixes:
    secondary captures), ``reject_image_types`` (any of them present), ``require_image_types``
    (all present), ``min_slices`` / ``max_slices``, ``slice_thickness_mm`` ([low, high], when
    the series states one), ``regular_spacing`` (when it can be told), ``body_parts`` (when the
    series states one), ``view_positions`` (every instance's, when stated; ``require_view``
    refuses a series that states none). Then survivors are ranked: most ``prefer_image_types``
    present, then ``prefer`` (``most_slices`` or ``thinnest``), then series order.
    """

    modalities: list[str] = field(default_factory=list)
    reject_sop_classes: list[str] = field(default_factory=list)
    reject_image_types: list[str] = field(default_factory=list)
    require_image_types: list[str] = field(default_factory=list)
    prefer_image_types: list[str] = field(default_factory=list)
    min_slices: int = 1
    max_slices: int | None = None
    slice_thickness_mm: list[float] | None = None
    regular_spacing: bool = False
    body_parts: list[str] = field(default_factory=list)
    view_positions: list[str] = field(default_factory=list)
    require_view: bool = False
    prefer: str = "most_slices"

    @classmethod
    def from_dict(cls, data: Mapping) -> Rules:
        """From a YAML mapping; an unknown key or a bad value is a ``ValueError`` naming it."""
        if not isinstance(data, Mapping):
            raise ValueError("a selection rule set must be a mapping of rule names to values")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown selection rule(s) {unknown}; valid: {sorted(known)}")
        rules = cls(**dict(data))
        if rules.prefer not in ("most_slices", "thinnest"):
            raise ValueError(f"prefer must be most_slices or thinnest, got {rules.prefer!r}")
        band = rules.slice_thickness_mm
        if band is not None and (len(band) != 2 or float(band[0]) > float(band[1])):
            raise ValueError(f"slice_thickness_mm must be [low, high], got {band!r}")
        if rules.min_slices < 1 or (rules.max_slices is not None and rules.max_slices < 1):
            raise ValueError("min_slices and max_slices must be at least 1")
        return rules

    @classmethod
    def load(cls, path: str | Path) -> Rules:
        """A rule file (YAML)."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the selection rules ({exc})") from None
        try:
            return cls.from_dict(data or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def default(cls, kind: str) -> Rules:
        """The shipped rules for input ``kind`` (``"ct"`` or ``"radiograph"``)."""
        if kind not in DEFAULT_RULES:
            raise ValueError(
                f"no default selection rules for {kind!r}; valid: {list(DEFAULT_RULES)}"
            )
        return cls.load(DEFAULT_RULES[kind])

    def rejection(self, s: SeriesSummary) -> str | None:
        """Why ``s`` cannot be used (the first failed condition), or None."""
        if self.modalities and s.modality not in _upper(self.modalities):
            return f"modality {s.modality or 'absent'}, not {'/'.join(self.modalities)}"
        if any(s.sop_class_uid.startswith(p) for p in self.reject_sop_classes):
            return f"SOP class {s.sop_class_uid} is not accepted (secondary capture or similar)"
        if bad := sorted(_upper(self.reject_image_types) & set(s.image_type)):
            return f"ImageType includes {', '.join(bad)}"
        if missing := sorted(_upper(self.require_image_types) - set(s.image_type)):
            return f"ImageType lacks {', '.join(missing)}"
        if s.slices < self.min_slices:
            return f"{s.slices} slice(s), fewer than {self.min_slices}"
        if self.max_slices is not None and s.slices > self.max_slices:
            return f"{s.slices} slices, more than {self.max_slices}"
        band = self.slice_thickness_mm
        if band is not None and s.slice_thickness is not None:
            if not float(band[0]) <= s.slice_thickness <= float(band[1]):
                return (f"slice thickness {s.slice_thickness:g} mm outside "
                        f"[{float(band[0]):g}, {float(band[1]):g}] mm")  # fmt: skip
        if self.regular_spacing and s.spacing_regular is False:
            return "slice positions are not evenly spaced"
        if self.body_parts and s.body_part and s.body_part not in _upper(self.body_parts):
            return f"body part {s.body_part}, not {'/'.join(self.body_parts)}"
        if self.view_positions:
            stated = [v for v in s.view_positions if v]
            if not stated and self.require_view:
                return "no ViewPosition stated"
            if other := sorted(set(stated) - _upper(self.view_positions)):
                return f"view {', '.join(other)}, not {'/'.join(self.view_positions)}"
        return None

    def rank(self, s: SeriesSummary) -> tuple:
        """Sort key of a usable series: lower is preferred."""
        preferred = len(_upper(self.prefer_image_types) & set(s.image_type))
        if self.prefer == "thinnest":
            size = s.slice_thickness if s.slice_thickness is not None else float("inf")
        else:
            size = -s.slices
        return (-preferred, size)


@dataclass(frozen=True)
class Selection:
    """The outcome: the chosen series (None when none qualifies), the reason each other series
    was passed over, and every series' summary."""

    chosen: str | None
    reasons: dict[str, str]
    series: list[SeriesSummary]

    def to_dict(self) -> dict:
        return {
            "chosen": self.chosen,
            "rejected": dict(self.reasons),
            "series": [s.to_dict() for s in self.series],
        }


def select_series(
    series: list[SeriesSummary], rules: Rules, *, series_uid: str | None = None
) -> Selection:
    """Choose one series by ``rules``, or the one named ``series_uid`` (the caller's override,
    which skips the rules: an explicit choice is the user's to make).

    Raises:
        KeyError: ``series_uid`` names no series of the study.
    """
    if series_uid is not None:
        if series_uid not in {s.series_uid for s in series}:
            raise KeyError(f"the study holds no series {series_uid!r}")
        others = {
            s.series_uid: "not the series asked for" for s in series if s.series_uid != series_uid
        }
        return Selection(series_uid, others, series)
    reasons, usable = {}, []
    for s in series:
        why = rules.rejection(s)
        if why is None:
            usable.append(s)
        else:
            reasons[s.series_uid] = why
    if not usable:
        return Selection(None, reasons, series)
    order = sorted(range(len(usable)), key=lambda i: (rules.rank(usable[i]), i))
    chosen = usable[order[0]]
    for i in order[1:]:
        reasons[usable[i].series_uid] = f"usable, but ranked below {chosen.series_uid}"
    return Selection(chosen.series_uid, reasons, series)
