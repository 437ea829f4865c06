"""One health state for the whole box: ok, degraded or fault, with the reasons.

The same state goes to the retained MQTT ``health`` topic and (issue #5) to the
status LEDs, so the dashboard and the light on the box never disagree. Pure
function of readings taken elsewhere, so every rule is tested without threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LEVELS = ("ok", "degraded", "fault")
# Below this much free space on the store's disk the box says so, long before it is full.
LOW_DISK_BYTES = 1_000_000_000
# Thermal limits (°C): Jetson and Pi SoCs throttle from about 80-85 °C.
HOT_C, TOO_HOT_C = 85.0, 95.0


@dataclass(frozen=True)
class Reason:
    """Why the box is not simply ok."""

    component: str  # camera | model | broker | disk | store | temperature
    level: str  # degraded | fault
    message: str


@dataclass(frozen=True)
class HealthReadings:
    """What the health rules look at (each taken by the part that owns it)."""

    source_state: str  # opening | streaming | fault | ended | closed
    source_reason: str = ""
    pipeline_failed: str = ""  # what stopped the pipeline, if anything
    broker_configured: bool = False
    broker_connected: bool = False
    broker_error: str = ""
    outbox_depth: int = 0
    outbox_fill: float = 0.0
    outbox_degraded: bool = False
    outbox_dropped: int = 0
    store_errors: int = 0  # results kept in memory because the disk refused them
    disk_free_bytes: int | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """The box's state and every reason behind it (empty when ok)."""

    state: str
    reasons: tuple[Reason, ...]


def assess(r: HealthReadings) -> Health:
    """The health state: the worst level among the reasons."""
    reasons = [*_camera(r), *_broker(r), *_storage(r), *_temperature(r)]
    if r.pipeline_failed:
        reasons.append(Reason("model", "fault", f"analysis stopped: {r.pipeline_failed}"))
    state = max((x.level for x in reasons), key=LEVELS.index, default="ok")
    return Health(state, tuple(reasons))


def _camera(r: HealthReadings) -> list[Reason]:
    if r.source_state == "fault":
        return [Reason("camera", "fault", f"no picture: {r.source_reason}")]
    if r.source_state == "opening":
        return [Reason("camera", "degraded", "camera starting")]
    return []


def _broker(r: HealthReadings) -> list[Reason]:
    if not r.broker_configured or r.broker_connected:
        return []
    why = f": {r.broker_error}" if r.broker_error else ""
    return [Reason("broker", "degraded",
                   f"broker unreachable{why}; {r.outbox_depth} messages kept on disk")]


def _storage(r: HealthReadings) -> list[Reason]:
    out = []
    if r.store_errors:
        out.append(Reason("store", "fault", f"{r.store_errors} results could not be written "
                                            "to disk and are held in memory"))
    if r.outbox_dropped:
        out.append(Reason("disk", "degraded", f"{r.outbox_dropped} unsent messages were "
                                              "dropped (outbox full); see outbox_dropped"))
    if r.outbox_degraded:
        out.append(Reason("disk", "degraded",
                          f"outbox {r.outbox_fill:.0%} full ({r.outbox_depth} messages)"))
    if r.disk_free_bytes is not None and r.disk_free_bytes < LOW_DISK_BYTES:
        out.append(Reason("disk", "degraded",
                          f"{r.disk_free_bytes / 1e6:.0f} MB free on the results disk"))
    return out


def _temperature(r: HealthReadings) -> list[Reason]:
    out = []
    for zone, celsius in sorted(r.temperatures_c.items()):
        if celsius >= TOO_HOT_C:
            out.append(Reason("temperature", "fault", f"{zone} at {celsius:.0f} °C"))
        elif celsius >= HOT_C:
            out.append(Reason("temperature", "degraded",
                              f"{zone} at {celsius:.0f} °C (throttling likely)"))
    return out
