"""Prometheus metrics: label values stay bounded whatever peers send."""

from __future__ import annotations

import re

from wschat.server.metrics import Metrics, close_code_label


def _hub_statistics() -> dict[str, int]:
    return {"rooms": 0, "members": 0, "broadcasts": 0, "deliveries": 0}


def test_registered_and_wschat_codes_keep_their_number() -> None:
    for code in (1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1012, 1013, 1015):
        assert close_code_label(code) == str(code)
    for code in (4401, 4403, 4408):
        assert close_code_label(code) == str(code)


def test_peer_chosen_codes_fall_into_buckets() -> None:
    assert close_code_label(3000) == close_code_label(3999) == "3xxx"
    assert close_code_label(4000) == close_code_label(4999) == "4xxx"
    # Reserved or never valid on the wire.
    for code in (0, 999, 1004, 1016, 2999, 5000, 65535):
        assert close_code_label(code) == "other"


def test_thousands_of_distinct_codes_make_a_handful_of_series() -> None:
    metrics = Metrics(_hub_statistics)
    for code in range(1000, 5000):
        metrics.count_close(code)
    text = metrics.render().decode()
    series = re.findall(r'^wschat_close_codes_total\{code="([^"]+)"\} (\S+)$', text, re.M)
    labels = {label: float(value) for label, value in series}
    assert labels["3xxx"] == 1000 and labels["4xxx"] == 1000 - 3  # but 4401, 4403, 4408
    assert labels["other"] == 1 + 1984  # 1004, 1016-2999
    assert labels["1000"] == labels["4401"] == labels["4403"] == 1
    assert len(labels) == 15 + 3 + 3  # registered, wschat's own, three buckets


def test_per_address_limit_has_its_own_counter() -> None:
    metrics = Metrics(_hub_statistics)
    metrics.address_rate_limited.inc()
    metrics.rate_limited.inc(2)
    text = metrics.render().decode()
    assert "wschat_address_rate_limited_messages_total 1.0" in text
    assert "wschat_rate_limited_messages_total 2.0" in text
