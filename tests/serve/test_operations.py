"""Honest operations (issue #17): ``/readyz`` is a 503 saying why until a model is loaded."""

from __future__ import annotations

import httpx
import pytest

from serve import launch


@pytest.mark.parametrize("broken", [False, True], ids=["empty", "broken-export"])
def test_readyz_is_503_with_a_reason_until_a_model_is_loaded(tmp_path, broken):
    models = tmp_path / "exports"
    models.mkdir()
    if broken:
        (models / "cxr").mkdir()
        (models / "cxr" / "manifest.json").write_text("{not json")
    server = launch.start(models, tmp_path / "server.log", probe="/livez")
    try:
        r = httpx.get(server.url + "/readyz", timeout=10)
        assert r.status_code == 503
        assert "no model is loaded" in r.text
        assert ("failed to load" in r.text) == broken
        assert str(tmp_path) not in r.text  # no server path to an unauthenticated client
        assert httpx.get(server.url + "/livez", timeout=10).status_code == 200
        docs = httpx.get(server.url + "/docs", timeout=10)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert httpx.get(server.url + "/static_content/swagger-ui.css").status_code == 200
        ui = httpx.get(server.url + "/", timeout=10)  # the viewer page, even with no model
        assert ui.status_code == 200 and '<script src="/ui/app.js">' in ui.text
        assert httpx.get(server.url + "/ui/app.js").is_success
    finally:
        server.stop()


def test_every_route_is_in_the_openapi_document():
    from starlette.routing import Route

    from serve.app import build_app
    from serve.openapi import spec

    paths = spec()["paths"]
    routes = [r for r in build_app().routes if isinstance(r, Route) and "{" not in r.path]
    assert len(routes) >= 9
    for route in routes:
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        assert route.path in paths and methods <= set(paths[route.path]), route.path
    for probe in ("/readyz", "/livez", "/healthz"):
        assert probe in paths


def test_json_log_format_gives_one_object_per_worker_line(exports, tmp_path):
    import json

    log = tmp_path / "server.log"
    server = launch.start(exports, log, env={"ANATOMIX_LOG_FORMAT": "json"})
    try:
        assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 200
        bad = httpx.post(server.url + "/v1/cxr/classify", files={"files": ("a.dcm", b"junk")})
        assert bad.status_code == 400
        code = bad.json()["error"]
    finally:
        server.stop()
    lines = log.read_text().splitlines()
    # the worker's lines from its start on: ours and BentoML's request lines alike
    first = next(i for i, ln in enumerate(lines) if '"logger": "anatomix' in ln)
    objects = [json.loads(ln) for ln in lines[first:] if ln.strip()]
    messages = " ".join(o["message"] for o in objects)
    assert "model(s) loaded" in messages and f"request refused: {code}" in messages
    assert any("/v1/cxr/classify" in o["message"] for o in objects if o["logger"] != "anatomix")
