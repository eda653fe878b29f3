"""PACS round trip: studies per minute from an Orthanc push to the result stored back in Orthanc.

    python -m bench.pacs [--ct 3] [--cr 5] [--quiet-s 1] [--models DIR] [--out DIR]

Issue #20. A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``, started as the tests do)
and ``bentoml serve`` over the exports in ``--models`` (default ./exports; the demo models are
built there if missing). One at a time, Orthanc pushes a 32-slice phantom CT study (axial
series only, 128 × 128) by STOW-RS and waits for the SEG to appear in it; then single chest CRs
(pydicom-data's RG1_UNCR under new UIDs) by C-STORE, each until its SR appears. Reported per
kind: the end-to-end time (push start → result in Orthanc) and the rate, and the stage split
from the job record (``GET /v1/jobs``): receive (first to last instance stored), assemble (the
quiet period, ``--quiet-s``), infer (decode + model), write (SEG/SR encoding), deliver (STOW-RS
back to Orthanc); "push" is Orthanc's own call until anatomix acknowledged everything. The
receive share is push / end-to-end. Writes ``<out>/pacs.json``. Not in CI.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file

from bench.demo_exports import ensure_demo_exports
from imaging.phantoms import make_chest_ct
from imaging.writers import ct_slice_datasets
from serve import launch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("receive", "assemble", "infer", "write", "deliver")


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_study(seed: int) -> tuple[str, list[bytes]]:
    ct = make_chest_ct(seed, shape=(32, 128, 128), findings=("nodule",))
    study = pydicom.uid.generate_uid()
    slices = ct_slice_datasets(ct.volume, study_uid=study, series_uid=pydicom.uid.generate_uid())
    return study, [_bytes(ds) for ds in slices]


def cr_study() -> tuple[str, list[bytes]]:
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    return ds.StudyInstanceUID, [_bytes(ds)]


def _found(orthanc, study: str, modality: str) -> bool:
    query = {"StudyInstanceUID": study, "Modality": modality}
    return bool(orthanc.post("/tools/find", json={"Level": "Instance", "Query": query}).json())


def round_trip(orthanc, url: str, study: str, files: list[bytes], how: str, result: str) -> dict:
    """Upload ``files`` to Orthanc, push the study to anatomix (``how``: stow or store), and time
    it until ``result`` (SEG or SR) is in Orthanc; the job's stage times."""
    for data in files:
        orthanc.upload(data)
    oid = orthanc.post("/tools/lookup", content=study.encode()).json()[0]["ID"]
    t0 = time.perf_counter()
    if how == "stow":
        orthanc.post("/dicom-web/servers/anatomix/stow", json={"Resources": [oid]})
    else:
        orthanc.post("/modalities/anatomix/store", json={"Resources": [oid], "Synchronous": True})
    pushed = time.perf_counter() - t0
    orthanc.wait_for(lambda: _found(orthanc, study, result), 600, f"the {result}")
    total = time.perf_counter() - t0

    def finished():  # the outbox reports delivery just after Orthanc has the result
        jobs = httpx.get(f"{url}/v1/jobs", timeout=10).json()["jobs"]
        job = next((j for j in jobs if j["study_uid"] == study), None)
        return job if job and job["state"] in ("delivered", "failed") else None

    job = orthanc.wait_for(finished, 60, "the job's delivery record")
    return {"total_s": total, "push_s": pushed, "state": job["state"],
            **{f"{k}_ms": job["timings_ms"].get(k) for k in STAGES}}  # fmt: skip


def summary(rows: list[dict]) -> dict:
    total = sum(r["total_s"] for r in rows)
    out = {"n": len(rows), "per_minute": 60.0 * len(rows) / total,
           "total_s_median": statistics.median(r["total_s"] for r in rows),
           "push_s_median": statistics.median(r["push_s"] for r in rows),
           "receive_share": sum(r["push_s"] for r in rows) / total}  # fmt: skip
    for k in STAGES:
        values = [r[f"{k}_ms"] for r in rows if r[f"{k}_ms"] is not None]
        out[f"{k}_ms_median"] = statistics.median(values) if values else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pacs", description=__doc__.split("\n")[0])
    p.add_argument("--ct", type=int, default=3, help="CT studies pushed (default 3)")
    p.add_argument("--cr", type=int, default=5, help="single CRs pushed (default 5)")
    p.add_argument("--quiet-s", type=float, default=1.0, help="ANATOMIX_STUDY_QUIET_S (1)")
    p.add_argument("--models", type=Path, default=ROOT / "exports")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "pacs")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.pacs.orthanc import require_pacs, start_orthanc  # the tests' Orthanc launcher

    require_pacs()
    models = ensure_demo_exports(args.models)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    orthanc = start_orthanc(work / "orthanc")
    dicom_port = launch.free_port()
    env = {
        "ANATOMIX_PACS_DIR": str(work / "pacs"),
        "ANATOMIX_STUDY_QUIET_S": str(args.quiet_s),
        "ANATOMIX_DICOM_AET": "ANATOMIX",
        "ANATOMIX_DICOM_PORT": str(dicom_port),
        "ANATOMIX_DICOM_ALLOW": f"{orthanc.aet}@127.0.0.1",
        "ANATOMIX_DESTINATIONS": f"dicomweb+http://127.0.0.1:{orthanc.http_port}/dicom-web",
        "ANATOMIX_MAX_FILES": "64",
    }
    srv = launch.start(models, args.out / "server.log", env=env)
    try:
        orthanc.set_dicomweb_server("anatomix", f"{srv.url}/dicomweb/")
        orthanc.set_modality("anatomix", "ANATOMIX", "127.0.0.1", dicom_port)
        rows = {"ct": [], "cr": []}
        for i in range(args.ct):
            study, files = ct_study(100 + i)
            rows["ct"].append(round_trip(orthanc, srv.url, study, files, "stow", "SEG"))
            print(f"CT {i + 1}/{args.ct}: {rows['ct'][-1]['total_s']:.2f} s", flush=True)
        for i in range(args.cr):
            study, files = cr_study()
            rows["cr"].append(round_trip(orthanc, srv.url, study, files, "store", "SR"))
            print(f"CR {i + 1}/{args.cr}: {rows['cr'][-1]['total_s']:.2f} s", flush=True)
    finally:
        srv.stop()
        orthanc.stop()
    result = {"quiet_s": args.quiet_s, "rows": rows,
              "summary": {k: summary(v) for k, v in rows.items() if v}}  # fmt: skip
    (args.out / "pacs.json").write_text(json.dumps(result, indent=2))
    for kind, s in result["summary"].items():
        stages = ", ".join(f"{k} {s[f'{k}_ms_median']:.0f} ms" for k in STAGES
                           if s[f"{k}_ms_median"] is not None)  # fmt: skip
        print(f"{kind}: {s['per_minute']:.1f} studies/min (n={s['n']}, median "
              f"{s['total_s_median']:.2f} s; push {s['push_s_median']:.2f} s = "
              f"{100 * s['receive_share']:.1f} % of the whole); stages: {stages}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
