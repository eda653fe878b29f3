"""The Server-Timing header the endpoints answer with (serve/timing.py)."""

from __future__ import annotations

import time

from serve.timing import StageTimer, parse_server_timing


def test_parse_a_hand_written_header():
    value = 'decode;dur=12.5, preprocess;desc="DALI";dur=3, infer;dur=80.25, cache'
    assert parse_server_timing(value) == {"decode": 12.5, "preprocess": 3.0, "infer": 80.25}
    assert parse_server_timing("") == {}
    assert parse_server_timing("x;dur=abc") == {}


def test_stages_accumulate_and_round_trip():
    timer = StageTimer()
    with timer.stage("decode"):
        time.sleep(0.02)
    with timer.stage("infer"):
        pass
    with timer.stage("decode"):
        time.sleep(0.01)
    got = parse_server_timing(timer.header())
    assert list(got) == ["decode", "infer"]
    assert 30.0 <= got["decode"] < 1000.0
    assert 0.0 <= got["infer"] < got["decode"]
