"""The serving boundary's small parts, without a server: API-key configuration (every malformed
setting refused at start-up), limits from the environment, log and UID privacy, lanes and the
priority gate, bounded metric labels."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import threading
import time
import warnings

import pytest

from serve.auth import ApiKeys
from serve.errors import RequestError
from serve.lanes import Lane, LaneConfig, PriorityGate
from serve.limits import ConfigError, Limits
from serve.metrics import Metrics
from serve.privacy import checked_modality, checked_uid, install

KEY = "k" * 8 + "-0123456789"


@pytest.mark.parametrize(
    "env",
    [
        {"ANATOMIX_API_KEYS": f"{KEY}, "},  # the trailing comma and space that once opened it
        {"ANATOMIX_API_KEYS": f",{KEY}"},
        {"ANATOMIX_API_KEYS": f"{KEY},,{KEY}2"},
        {"ANATOMIX_API_KEYS": ""},
        {"ANATOMIX_API_KEYS": "   "},
        {"ANATOMIX_API_KEYS": "short"},
        {"ANATOMIX_API_KEYS": "has a space in the key"},
        {"ANATOMIX_API_KEY_SHA256": "abc"},
        {"ANATOMIX_API_KEY_SHA256": "g" * 64},
        {"ANATOMIX_API_KEY_SHA256": hashlib.sha256(b"x").hexdigest() + ","},
    ],
)
def test_every_malformed_key_setting_stops_the_start(env):
    with pytest.raises(ConfigError) as info:
        ApiKeys.from_env(env)
    assert next(iter(env)) in str(info.value)
    assert KEY not in str(info.value)  # the message never quotes a key


def test_keys_plain_and_hashed():
    digest = hashlib.sha256(b"another-key-0123456789").hexdigest()
    keys = ApiKeys.from_env({"ANATOMIX_API_KEYS": f" {KEY} ", "ANATOMIX_API_KEY_SHA256": digest})
    assert keys.required
    assert keys.check({"x-api-key": KEY})
    assert keys.check({"authorization": "Bearer another-key-0123456789"})
    assert keys.check({"authorization": f"bearer {KEY}"})
    for bad in ({}, {"x-api-key": ""}, {"x-api-key": " "}, {"x-api-key": KEY[:-1]},
                {"authorization": "Bearer "}, {"x-api-key": digest}):  # fmt: skip
        assert not keys.check(bad), bad
    # what the service holds: digests only, never a usable key
    assert all(len(d) == 32 for d in keys.digests) and KEY.encode() not in keys.digests
    assert ApiKeys.from_env({}).check({}) and not ApiKeys.from_env({}).required


@pytest.mark.parametrize("value", ["ten", "-1", "0", "nan", "inf", ""])
def test_malformed_limits_stop_the_start(value):
    with pytest.raises(ConfigError, match="ANATOMIX_MAX_UPLOAD_MB"):
        Limits.from_env({"ANATOMIX_MAX_UPLOAD_MB": value})


def test_limits_from_env_and_inflate_budget():
    limits = Limits.from_env({"ANATOMIX_MAX_UPLOAD_MB": "16", "ANATOMIX_DECODE_TIMEOUT_S": "2.5"})
    assert limits.max_body_bytes == 16 << 20 and limits.decode_timeout_s == 2.5
    assert limits.inflate_budget(1 << 20, 1 << 40) == 32 << 20  # the ratio
    assert limits.inflate_budget(10, 1 << 40) == limits.inflate_floor_bytes  # the floor
    assert limits.inflate_budget(1 << 30, 5) == 5  # the request's remaining absolute cap


def test_uids_and_modality_are_checked_before_they_are_echoed():
    assert checked_uid("1.2.840.10008.5.1.4.1.1.2 \x00", "SOPInstanceUID") == (
        "1.2.840.10008.5.1.4.1.1.2"
    )
    assert checked_uid("", "SOPInstanceUID") == ""
    for bad in ("1.2.3\\Doe^John", "1.2." + "3" * 80, "1..2", "Doe^John"):
        with pytest.raises(RequestError) as info:
            checked_uid(bad, "SOPInstanceUID")
        assert info.value.status == 422 and "Doe" not in info.value.detail
    assert checked_modality("CT") == "CT"
    assert checked_modality("CT\\Doe^John^HOSPITAL") is None
    assert checked_modality("ZANZIBAR") is None  # valid code string, but not a modality term


def test_third_party_log_records_and_warnings_lose_their_values(caplog):
    install()
    secret = "Doe^Jane-PID4711"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("highdicom.seg").warning("value %s of PatientName", secret)
        logging.getLogger("pydicom").warning(f"bad value {secret}")
        try:
            raise ValueError(f"cannot parse {secret}")
        except ValueError:
            logging.getLogger("bentoml.access").exception("request failed")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"attribute quoted: {secret}", UserWarning, stacklevel=1)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    for record in caplog.records:
        handler.handle(record)
    text = out.getvalue()
    assert secret not in text and "Doe" not in text
    assert "withheld" in text and "ValueError" in text and "UserWarning" in text


def test_lane_refuses_beyond_its_queue_at_once():
    async def scenario():
        lane = Lane("ct", LaneConfig(concurrency=1, queue=1, wait_s=0.3))
        release = asyncio.Event()
        outcomes = []

        async def hold():
            async with lane.slot():
                await release.wait()

        async def one():
            t0 = time.monotonic()
            try:
                async with lane.slot():
                    outcomes.append(("ok", time.monotonic() - t0))
            except RequestError as exc:
                outcomes.append((exc.code, time.monotonic() - t0, exc.headers))

        holder = asyncio.ensure_future(hold())
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(one())  # waits in the queue
        await asyncio.sleep(0)
        await one()  # the queue is full: busy at once
        await waiter  # times out after wait_s: busy
        release.set()
        await holder
        await one()  # free again
        return outcomes

    out = asyncio.run(scenario())
    assert out[0][0] == "busy" and out[0][1] < 0.05 and out[0][2]["Retry-After"]
    assert out[1][0] == "busy" and 0.25 < out[1][1] < 1.0
    assert out[2][0] == "ok"


def test_priority_gate_holds_background_work_while_urgent_work_runs():
    gate = PriorityGate(max_yield_s=5)
    waited = []

    def background():
        t0 = time.monotonic()
        gate.yield_to_urgent()
        waited.append(time.monotonic() - t0)

    with gate.urgent():
        t = threading.Thread(target=background)
        t.start()
        time.sleep(0.3)
        assert not waited  # still held
    t.join(2)
    assert waited and waited[0] >= 0.25
    t0 = time.monotonic()
    gate.yield_to_urgent()  # nothing urgent: no wait
    assert time.monotonic() - t0 < 0.05
    capped = PriorityGate(max_yield_s=0.2)
    with capped.urgent():
        t0 = time.monotonic()
        capped.yield_to_urgent()  # never starved for longer than max_yield_s
        assert 0.15 < time.monotonic() - t0 < 1.0


def test_metric_labels_stay_bounded():
    m = Metrics(["/v1/cxr/classify"])
    for i in range(2000):
        m.observe(m.route_label(f"/v1/random/{i}"), "POST", 404, time.monotonic())
        m.observe(m.route_label(None), f"M{i}", 404, time.monotonic())
    m.observe(m.route_label("/v1/cxr/classify"), "POST", 200, time.monotonic())
    text = m.render().decode()
    assert "/v1/random" not in text and "M1999" not in text
    assert 'route="unmatched"' in text and 'route="/v1/cxr/classify"' in text
    assert len(text) < 20_000


def test_preprocess_mode_defaults_to_numpy_on_a_cpu_and_refuses_unknown_values():
    from serve.app import preprocess_mode
    from serve.settings import Settings

    assert preprocess_mode(Settings.from_env({}).preprocess) == "numpy"  # no GPU here
    assert preprocess_mode(Settings.from_env({"ANATOMIX_PREPROCESS": "DALI"}).preprocess) == "dali"
    with pytest.raises(ConfigError, match="ANATOMIX_PREPROCESS"):
        Settings.from_env({"ANATOMIX_PREPROCESS": "opencv"})


@pytest.mark.parametrize(
    "env, name",
    [
        ({"ANATOMIX_CXR_CONCURRENCY": "four"}, "ANATOMIX_CXR_CONCURRENCY"),
        ({"ANATOMIX_CT_QUEUE": "0"}, "ANATOMIX_CT_QUEUE"),
        ({"ANATOMIX_METRICS_PUBLIC": "yes"}, "ANATOMIX_METRICS_PUBLIC"),
        ({"ANATOMIX_RUNTIME": "cuda"}, "ANATOMIX_RUNTIME"),
        ({"ANATOMIX_MAX_LATENCY_MS": "-1"}, "ANATOMIX_MAX_LATENCY_MS"),
        ({"ANATOMIX_LOG_FORMAT": "xml"}, "ANATOMIX_LOG_FORMAT"),
        ({"ANATOMIX_ORT_SPINNING": "yes"}, "ANATOMIX_ORT_SPINNING"),
        ({"ANATOMIX_LOG_LEVEL": "chatty"}, "ANATOMIX_LOG_LEVEL"),
        ({"ANATOMIX_MAX_UPLOAD_MB": "lots"}, "ANATOMIX_MAX_UPLOAD_MB"),
        ({"ANATOMIX_API_KEYS": "k1, "}, "ANATOMIX_API_KEYS"),
        # a typo of an API-key setting would leave the server open: it stops the start
        ({"ANATOMIX_API_KEY": "a-long-enough-key-0123"}, "did you mean ANATOMIX_API_KEYS"),
    ],
)
def test_every_bad_setting_stops_the_start_naming_it(env, name):
    from serve.settings import Settings

    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_settings_defaults_values_and_unknown_names(caplog):
    from serve.settings import Settings

    s = Settings.from_env({})
    assert (s.cxr_lane.concurrency, s.ct_lane.queue, s.preprocess, s.runtime) == (
        4,
        8,
        "auto",
        None,
    )
    s = Settings.from_env({"ANATOMIX_CT_TIMEOUT_S": "12", "ANATOMIX_RUNTIME": "ort-cpu",
                           "ANATOMIX_THREADS": "0", "ANATOMIX_LOG_FORMAT": "JSON"})  # fmt: skip
    assert (s.ct_timeout_s, s.runtime, s.threads, s.log_format) == (12.0, "ort-cpu", None, "json")
    assert not s.ort_spinning and Settings.from_env({"ANATOMIX_ORT_SPINNING": "1"}).ort_spinning
    with caplog.at_level(logging.WARNING, logger="anatomix.serve"):
        Settings.from_env({"ANATOMIX_MAX_UPLAOD_MB": "16", "ANATOMIX_REQUIRE_ORTHANC": "1"})
    assert "ANATOMIX_MAX_UPLAOD_MB" in caplog.text and "ANATOMIX_MAX_UPLOAD_MB" in caplog.text
    assert "ANATOMIX_REQUIRE_ORTHANC" not in caplog.text


def test_json_log_lines_are_one_object_each_without_exception_messages():
    import json as json_

    from serve.logs import JsonFormatter

    try:
        raise ValueError("Doe^John")
    except ValueError:
        import sys

        info = sys.exc_info()
    record = logging.LogRecord(
        "anatomix.serve", logging.ERROR, __file__, 1, "request refused: %s", ("bad_form",), info
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line and "Doe" not in line
    obj = json_.loads(line)
    assert obj["message"] == "request refused: bad_form" and obj["exception"] == "ValueError"
    assert obj["level"] == "ERROR" and obj["logger"] == "anatomix.serve"
