"""The box's one health state: every rule, and the worst reason winning."""

from __future__ import annotations

import pytest

from appliance.service.health import HealthReadings, assess


def test_a_streaming_box_with_nothing_wrong_is_ok() -> None:
    h = assess(HealthReadings(source_state="streaming", broker_configured=True,
                              broker_connected=True, disk_free_bytes=50_000_000_000,
                              temperatures_c={"cpu-thermal": 55.0}))
    assert (h.state, h.reasons) == ("ok", ())


@pytest.mark.parametrize(("readings", "state", "component"), [
    (HealthReadings(source_state="fault", source_reason="unplugged"), "fault", "camera"),
    (HealthReadings(source_state="opening"), "degraded", "camera"),
    (HealthReadings(source_state="streaming", broker_configured=True, outbox_depth=12),
     "degraded", "broker"),
    (HealthReadings(source_state="streaming", store_errors=2), "fault", "store"),
    (HealthReadings(source_state="streaming", outbox_degraded=True, outbox_fill=0.6),
     "degraded", "disk"),
    (HealthReadings(source_state="streaming", outbox_dropped=3), "degraded", "disk"),
    (HealthReadings(source_state="streaming", disk_free_bytes=10_000_000), "degraded", "disk"),
    (HealthReadings(source_state="streaming", temperatures_c={"GPU-therm": 88.0}), "degraded",
     "temperature"),
    (HealthReadings(source_state="streaming", temperatures_c={"GPU-therm": 97.0}), "fault",
     "temperature"),
    (HealthReadings(source_state="ended", pipeline_failed="model refused"), "fault", "model"),
])
def test_each_rule(readings: HealthReadings, state: str, component: str) -> None:
    h = assess(readings)
    assert h.state == state
    assert [r.component for r in h.reasons] == [component]


def test_the_worst_reason_sets_the_state_and_all_are_kept() -> None:
    h = assess(HealthReadings(source_state="fault", source_reason="timeout",
                              broker_configured=True, broker_error="refused",
                              temperatures_c={"soc": 86.0}))
    assert h.state == "fault"
    assert {r.component for r in h.reasons} == {"camera", "broker", "temperature"}
    assert any("refused" in r.message for r in h.reasons)
