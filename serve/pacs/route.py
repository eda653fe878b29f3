"""What a complete study is run through: every loaded model whose input the study holds. A CT
series goes to the segmentation model (the series chosen by the CT selection rules, in the
decoding process, as for an upload) and gives a DICOM SEG; the frontal radiographs chosen by the
radiograph rules go to the classifier and each gives a DICOM SR. Both run through the same
functions as ``/v1/ct/segment.dcm`` and ``/v1/cxr/classify``, so a PACS gets what the API gives.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from imaging.selection import Rules, select_series, summarise

from .. import app
from ..errors import RequestError
from ..forms import FilePart
from ..registry import MODALITIES
from ..timing import StageTimer

#: roles a study is routed to, and the input each needs
ROLES = {"ct_segment": "ct", "cxr_classify": "radiograph"}


@dataclass
class Outcome:
    """One study's results: file name → DICOM bytes, the series each model chose, the reason
    each other series was passed over, the models run, stage times (ms), and why a model that
    could have run did not (no series matched its rules, or its work failed)."""

    results: dict[str, bytes] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, dict[str, str]] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class _Form:
    """The upload form :mod:`serve.app`'s work functions read, made from inbox files."""

    files: list[FilePart]
    fields: dict[str, str]


def _form(paths: list[Path], model_id: str) -> _Form:
    parts = [FilePart("files", p.name, p, p.stat().st_size) for p in paths]
    return _Form(parts, {"model": model_id})


def _modalities(paths: list[Path]) -> dict[Path, str]:
    out = {}
    for p in paths:  # checked at intake: headers parse
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality"])
        out[p] = str(ds.get("Modality", "")).strip().upper()
    return out


def run_study(st: app.State, paths: list[Path], *, uid_root: str | None, cxr_rules: dict | None,
              cancelled: threading.Event | None = None) -> Outcome:  # fmt: skip
    """Run ``paths`` (one study's inbox files) through every model that takes them."""
    out = Outcome()
    kinds = _modalities(paths)
    ct = [p for p in paths if kinds[p] in MODALITIES["ct"]]
    films = [p for p in paths if kinds[p] in MODALITIES["radiograph"]]
    for role, inputs, work in (("ct_segment", ct, _segment), ("cxr_classify", films, _classify)):
        if not inputs:
            continue
        try:
            m = st.registry.get(role, None)
        except RequestError:
            continue  # no model of this role is loaded: nothing to route here
        budget_s = st.budgets["ct" if role == "ct_segment" else "cxr"]
        budget = app.Budget(time.monotonic() + budget_s, cancelled or threading.Event(), budget_s)
        timer = StageTimer()
        try:
            work(st, m, inputs, budget, timer, out, uid_root=uid_root, cxr_rules=cxr_rules)
        except RequestError as exc:
            out.skipped[m.id] = f"{exc.code}: {exc.detail}"
        for stage, ms in timer.ms.items():
            key = "write" if stage == "write" else "infer"
            out.timings_ms[key] = out.timings_ms.get(key, 0.0) + ms
    return out


def _segment(st, m, paths, budget, timer, out: Outcome, *, uid_root, cxr_rules) -> None:
    form = _form(paths, m.id)
    m, volume, masks, labels, _, heads, _ = app.segment_series(st, form, budget, timer, True)
    selection = app._selection(volume)
    chosen = selection["chosen"]
    out.series[m.id], out.rejected[m.id] = chosen, selection["rejected"]
    out.models.append(m.id)
    with timer.stage("write"):
        # the same model and source instances give the same SEG UIDs: a re-run stores once
        uids_from = [m.id, chosen, *volume.meta["sop_uids"]]
        seg = app.seg_result(m, volume, masks, labels, heads, uid_root=uid_root,
                             uids_from=uids_from)  # fmt: skip
    out.results[f"seg-{len(out.results)}.dcm"] = seg


def _classify(st, m, paths, budget, timer, out: Outcome, *, uid_root, cxr_rules) -> None:
    from .sr import sr_bytes

    form = _form(paths, m.id)
    # the rule set of the model's input kind (its family's preprocessing preset)
    kind = m.manifest.preprocessing.kind
    rules = Rules.from_dict(cxr_rules) if cxr_rules else Rules.default(kind)
    m, items, ids, probs = app._radiographs(st, "cxr_classify", form, budget, timer)
    selection = select_series(summarise(img for _, img, _, _ in items), rules)
    out.rejected[m.id] = dict(selection.reasons)
    if selection.chosen is None:
        raise RequestError(422, "no_suitable_series", "no series matched the radiograph rules")
    out.series[m.id] = selection.chosen
    out.models.append(m.id)
    by_name = {p.name: p for p in paths}
    for i, (name, img, _, _) in enumerate(items):
        if img.series_uid != selection.chosen:
            continue
        findings = app.findings(m, probs, i)
        with timer.stage("write"):
            source = pydicom.dcmread(by_name[name], stop_before_pixels=True)
            sop = ids[i]["sop_uid"]
            sr = sr_bytes(source, findings, model_id=m.id, version=app.anatomix_version(),
                          uid_root=uid_root, uids_from=[m.id, sop])  # fmt: skip
        out.results[f"sr-{len(out.results)}.dcm"] = sr
