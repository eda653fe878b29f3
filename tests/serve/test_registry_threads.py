"""How the server sizes ONNX Runtime for each export (serve.registry ``_load``)."""

from __future__ import annotations

import pytest

from serve import registry
from serve.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _threads(exports, env: dict) -> dict[str, int]:
    s = Settings.from_env({"ANATOMIX_MODELS": str(exports)} | env)
    reg = registry.ModelRegistry.from_settings(s)
    out = {}
    for m in reg.models:
        opts = m.runtime._session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        out[m.manifest.task] = opts.intra_op_num_threads
    return out


def test_light_models_get_one_thread_heavy_ones_keep_the_default(exports, monkeypatch):
    monkeypatch.setattr(registry, "LIGHT_MODEL_MS", 1e9)  # every timed model counts as light
    light = _threads(exports, {})
    assert light["classify"] == 1 and light["correspond"] == 1
    assert light["segment"] == 0  # a CT model (dynamic spatial axes) is never timed: default
    monkeypatch.setattr(registry, "LIGHT_MODEL_MS", 0.0)  # none is light
    assert set(_threads(exports, {}).values()) == {0}  # 0: ONNX Runtime chooses (all cores)
    monkeypatch.setattr(registry, "LIGHT_MODEL_MS", 1e9)
    assert set(_threads(exports, {"ANATOMIX_THREADS": "2"}).values()) == {2}  # operator's word
