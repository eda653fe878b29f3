"""The OpenAPI description of :mod:`serve.app`'s routes, served at ``/docs.json`` (``/docs`` shows
it): every endpoint, its form fields and limits, and the error body every refusal shares."""

from __future__ import annotations

ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "a stable code, e.g. not_dicom, busy"},
        "detail": {"type": "string", "description": "what was wrong, without patient values"},
    },
}
#: the input guard's warnings (serve.guard), part of every result
OK = (
    "the result; each result (CT: the answer; segment.dcm: the X-Anatomix-Warnings header) carries "
    "input guard warnings [{code, detail, file}]: unexpected_modality, lateral_view, unknown_view, "
    "intensity_out_of_distribution, small_input, implausible_hu, missing_spacing, "
    "anisotropic_spacing"
)
REFUSALS = {
    "400": "malformed request or file (bad_form, unknown_field, expected_file, not_dicom, ...)",
    "401": "a valid API key is required (X-API-Key or Authorization: Bearer)",
    "408": "the body did not arrive in time (upload_timeout)",
    "413": "a limit was passed (upload_too_large, too_many_files, image_too_large, ...)",
    "415": "not multipart/form-data, or an unsupported transfer syntax or photometric",
    "422": "the file is valid DICOM but cannot be used (wrong_modality, invalid_uid, ...), or an "
    "input guard warning this deployment refuses (ANATOMIX_REFUSE_WARNINGS)",
    "503": "busy (Retry-After) or no model serves the endpoint",
    "504": "the request's time budget ran out; its work was stopped",
}


def _form(files: dict[str, str], fields: dict[str, str]) -> dict:
    props = {name: {"type": "array", "items": {"type": "string", "format": "binary"},
                    "description": text} for name, text in files.items()}  # fmt: skip
    props |= {name: {"type": "string", "description": text} for name, text in fields.items()}
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"type": "object", "properties": props,
                                                       "required": list(files)}}},
    }  # fmt: skip


COMMON = {
    "allow_any_modality": "true to run on any Modality (default: radiographs or CT only)",
    "model": "the id of a loaded model (GET /v1/models); default: the best for the endpoint",
}
FILES = {"files": "DICOM files, .dcm.gz, or zip archives of them"}
SERIES = {
    "series_uid": "segment this series of the upload (default: the one the selection "
    "rules choose, imaging/selection_ct.yaml or ANATOMIX_CT_SELECTION)"
}
ENDPOINTS = {
    "/v1/cxr/classify": ("Chest radiographs → probability per finding, per label set", FILES, {}),
    "/v1/embed": ("Radiographs → one embedding vector each", FILES, {}),
    "/v1/cxr/correspond": (
        "Two radiographs → for each query point of A the matching point of B",
        {"image_a": "radiograph A", "image_b": "radiograph B"},
        {"points": "'row,col;row,col' in A's pixels (default: a 5 × 5 grid); at most 1000"},
    ),
    "/v1/ct/segment": (
        "A CT series, or a whole study whose series the selection rules choose from → per "
        "label: voxels, volume (mL), bounding box; the chosen series and why the others were not",
        FILES,
        SERIES,
    ),
    "/v1/ct/segment.dcm": (
        "A CT series (or a study, as above) → the masks as a DICOM SEG object",
        FILES,
        SERIES,
    ),
    "/v1/ct/view": (
        "For the viewer page: the /v1/ct/segment answer plus `view`, a token for GET "
        "/v1/ct/view/{view}/{slice}.png?window=lung|soft|bone&overlay=0|1 and "
        "/v1/ct/view/{view}/seg.dcm (kept 15 minutes, 512 MB in all)",
        FILES,
        SERIES,
    ),
    "/v1/preview": (
        "One radiograph → a PNG of it as the model sees its intensities (at most 1024 px); "
        "X-Image-Size: its original rows,columns",
        FILES,
        {},
    ),
}


def spec(version: str = "0") -> dict:
    paths = {}
    for route, (summary, files, fields) in ENDPOINTS.items():
        media = "application/dicom" if route.endswith(".dcm") else "application/json"
        if route == "/v1/preview":
            media = "image/png"
        responses = {"200": {"description": OK, "content": {media: {}}}}
        responses |= {code: {"description": text,
                             "content": {"application/json": {"schema": ERROR}}}
                      for code, text in REFUSALS.items()}  # fmt: skip
        body = _form(files, fields | COMMON)
        security = [{"key": []}, {"bearer": []}]
        paths[route] = {"post": {"summary": summary, "requestBody": body,
                                 "responses": responses, "security": security}}  # fmt: skip
    paths["/v1/models"] = {"get": {"summary": "The loaded models and exports that failed to load",
                                   "responses": {"200": {"description": "models"}}}}  # fmt: skip
    jobs = {"200": {"description": "job records"}, "401": {"description": "API key"}}
    paths["/v1/jobs"] = {"get": {
        "summary": "The PACS pipeline's jobs, newest first: study UID (never patient data), "
        "selected series, models, state (received, selected, inferring, delivering, delivered, "
        "processed, failed with the reason), stage timings; ?limit= (1-1000), ?state=",
        "responses": jobs, "security": [{"key": []}, {"bearer": []}]}}  # fmt: skip
    paths["/v1/jobs/{job_id}"] = {
        "get": {
            "summary": "One job",
            "responses": jobs | {"404": {"description": "no such job"}},
            "security": [{"key": []}, {"bearer": []}],
        }
    }
    stow = {
        "summary": "DICOMweb STOW-RS (PS3.18 §10.5): store CT, CR, DX and secondary capture "
        "instances; each is on disk before the answer, and complete studies are routed to the "
        "models, results sent to ANATOMIX_DESTINATIONS",
        "requestBody": {"required": True, "content": {
            'multipart/related; type="application/dicom"': {}}},
        "responses": {
            "200": {"description": "all stored (ReferencedSOPSequence)",
                    "content": {"application/dicom+json": {}}},
            "202": {"description": "some stored; the others in FailedSOPSequence with a "
                    "FailureReason (0xC000 not DICOM or corrupt, 0x0122 SOP class not accepted, "
                    "0xA901 another study than the URL's, 0xA700 inbox full)"},
            "409": {"description": "none stored (FailedSOPSequence)"},
            **{c: {"description": REFUSALS[c]} for c in ("400", "401", "413")},
            "415": {"description": 'not multipart/related; type="application/dicom"'},
        },
        "security": [{"key": []}, {"bearer": []}],
    }  # fmt: skip
    paths["/dicomweb/studies"] = {"post": stow}
    paths["/dicomweb/studies/{study}"] = {"post": stow}
    paths["/v1/ct/view/{view}/{item}"] = {"get": {
        "summary": "A slice PNG ({slice}.png, ?window=lung|soft|bone, ?overlay=0|1) or the "
        "DICOM SEG (seg.dcm) of a study POST /v1/ct/view kept",
        "responses": {"200": {"description": "image/png or application/dicom"},
                      "404": {"description": "no such view (expired) or slice"}},
        "security": [{"key": []}, {"bearer": []}]}}  # fmt: skip
    paths["/"] = {"get": {"summary": "The viewer page (serve/ui/): radiograph findings, CT "
                          "slices with the masks, correspondence, jobs, models",
                          "responses": {"200": {"description": "HTML"}}}}  # fmt: skip
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics (key required when "
                                 "ANATOMIX_METRICS_PUBLIC=0)",
                                 "responses": {"200": {"description": "text format"}}}}  # fmt: skip
    paths["/docs.json"] = {"get": {"summary": "This document (OpenAPI 3)",
                                   "responses": {"200": {"description": "JSON"}}}}  # fmt: skip
    paths["/docs"] = {"get": {"summary": "The interactive documentation (BentoML's Swagger UI)",
                              "responses": {"200": {"description": "HTML"}}}}  # fmt: skip
    probes = {
        "/livez": "the process is up",
        "/healthz": "the process is up",
        "/readyz": "at least one model is loaded (503 with the reason otherwise)",
    }
    for route, text in probes.items():  # BentoML's own routes, described here for operators
        paths[route] = {"get": {"summary": text, "responses": {
            "200": {"description": "yes"}, "503": {"description": "no, and why"}}}}  # fmt: skip
    return {
        "openapi": "3.0.2",
        "info": {"title": "anatomix", "version": version,
                 "description": "DICOM in, findings, masks, embeddings and correspondences out."},
        "paths": paths,
        "components": {"securitySchemes": {
            "key": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        }},
    }  # fmt: skip
