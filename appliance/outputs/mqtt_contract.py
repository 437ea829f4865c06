"""The MQTT contract: topics, payload builders, opaque case ids and the box's own readings.

``docs/mqtt.md`` is the contract in words and ``docs/mqtt/*.schema.json`` the payloads'
JSON Schemas; the tests validate every builder here against them. Everything is a pure
function except :func:`system_readings` (which only reads /proc and /sys) and
:func:`read_case_salt`. No paho here: ``mqtt_link.py`` does the talking.

Every payload is a JSON object with ``schema`` (e.g. ``eyepiece.field/1``), ``device_id``
and ``sent_at``; a consumer dispatches on ``schema`` and refuses versions it does not know.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from appliance import __version__
from appliance.assays.her2.types import ModelRef
from appliance.config import ConfigError, MqttConfig
from appliance.outputs.result_json import SCHEMA_VERSION as RESULT_SCHEMA_VERSION

SCHEMA_DIR: Path = Path(__file__).resolve().parents[2] / "docs" / "mqtt"

STATUS_SCHEMA = "eyepiece.status/1"
FIELD_SCHEMA = "eyepiece.field/1"
CASE_SCHEMA = "eyepiece.case/1"
HEP2_CASE_SCHEMA = "eyepiece.hep2-case/1"  # same topic: a HEp-2 case's summary
HEALTH_SCHEMA = "eyepiece.health/1"
METRICS_SCHEMA = "eyepiece.metrics/1"
REPLY_SCHEMA = "eyepiece.reply/1"

HEALTH_STATES = ("ok", "degraded", "fault")  # in rising severity
HEALTH_COMPONENTS = ("camera", "model", "broker", "disk", "temperature", "store")
HEALTH_LEVELS = ("degraded", "fault")  # what one reason contributes to the state

CASE_ID_PREFIX = "h-"  # marks a case id hashed on the box with the site's salt
MIN_SALT_BYTES = 16
MAX_RAW_CASE_ID_CHARS = 128
MAX_HEALTH_MESSAGE_CHARS = 300

_OPAQUE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # case ids, message ids
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HOST_JUNK_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[a-z0-9_]{1,32}")  # assay names
_MAX_TOPIC_BYTES = 60000  # MQTT allows 65535; room for the suffixes
_HASH_HEX_CHARS = 32  # 128 bits of HMAC-SHA256: no collision among a site's cases

# Jetson GPU load in per mille, by board generation (Nano/TX2, Xavier, Orin).
_GPU_LOAD_FILES = (
    "devices/gpu.0/load",
    "devices/platform/gpu.0/load",
    "devices/17000000.gv11b/load",
    "devices/platform/17000000.gv11b/load",
    "devices/17000000.ga10b/load",
    "devices/platform/17000000.ga10b/load",
)
_PLAUSIBLE_C = (-60.0, 200.0)  # outside this a thermal zone reports an error code, not heat

# The keys `metrics(extra=...)` accepts, with their JSON type (docs/mqtt/metrics.schema.json).
SYSTEM_KEYS: dict[str, str] = {
    "load_1m": "number",
    "load_5m": "number",
    "load_15m": "number",
    "cpu_count": "integer",
    "temperatures_c": "object",
    "gpu_load_percent": "number",
    "disk_free_bytes": "integer",
    "disk_total_bytes": "integer",
    "outbox_depth": "integer",
    "outbox_capacity": "integer",
    "outbox_dropped": "integer",
}


# ---------------------------------------------------------------- ids and topics


def is_opaque_id(value: object) -> bool:
    """True for 1-64 characters of ``[A-Za-z0-9_-]``: safe in a payload, a topic, a log."""
    return isinstance(value, str) and _OPAQUE_RE.fullmatch(value) is not None


def check_device_id(value: str) -> str:
    """``value`` if it is a usable device id, else ValueError naming why.

    A device id is a topic level and a broker ACL pattern: no ``+``, ``#`` or ``/``,
    and for every tool's sake only letters, digits, ``_ . -`` (1-64, letter or digit first).
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"device id {value!r}: must be a non-empty string")
    bad = sorted(set(value) & set("+#/"))
    if bad:
        raise ValueError(f"device id {value!r}: contains {''.join(bad)!r}, which MQTT "
                         "reserves for wildcards and levels")
    if _DEVICE_ID_RE.fullmatch(value) is None:
        raise ValueError(f"device id {value!r}: use 1-64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")
    return value


def device_id_for(cfg: MqttConfig, hostname: str) -> str:
    """This box's device id: ``mqtt.device_id`` as configured, or the host name made safe.

    A configured id is refused (ConfigError on ``mqtt.device_id``) rather than changed:
    the operator chose it and the broker's ACL names it. A host name is sanitised.
    """
    if cfg.device_id:
        try:
            return check_device_id(cfg.device_id)
        except ValueError as exc:
            raise ConfigError("mqtt.device_id", str(exc)) from exc
    cleaned = _HOST_JUNK_RE.sub("-", hostname).lstrip("-_.")[:64].rstrip("-_.")
    if not cleaned:
        raise ConfigError("mqtt.device_id", f"the host name {hostname!r} gives no usable "
                          "device id; set mqtt.device_id")
    return cleaned


def _prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot start our topics, or None when it can."""
    if not prefix or not prefix.endswith("/"):
        return "must be non-empty and end with '/'"
    if prefix.startswith("$"):
        return "must not start with '$' (reserved by brokers, e.g. $SYS)"
    for ch, why in (("+", "a wildcard"), ("#", "a wildcard"), ("\x00", "not allowed in MQTT")):
        if ch in prefix:
            return f"contains {ch!r} ({why})"
    if "{" in prefix or "}" in prefix:
        return "has a '{...}' placeholder left: only {device_id} is replaced"
    if "" in prefix[:-1].split("/"):
        return "has an empty topic level ('//' or a leading '/')"
    if len(prefix.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES:
        return f"is longer than {_MAX_TOPIC_BYTES} bytes"
    return None


def topic_prefix(cfg: MqttConfig, hostname: str) -> str:
    """The topic prefix with the device id in place, ending in ``/``; ConfigError if unusable."""
    prefix = cfg.topic_prefix.replace("{device_id}", device_id_for(cfg, hostname))
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # "eyepiece/box1" means the same as "eyepiece/box1/"
    problem = _prefix_problem(prefix)
    if problem:
        raise ConfigError("mqtt.topic_prefix", f"{prefix!r} {problem}")
    return prefix


def _check_level(name: str) -> str:
    """``name`` if it is one topic level (a command name), else ValueError."""
    if not name or any(ch in name for ch in "+#/\x00"):
        raise ValueError(f"{name!r} is not a single MQTT topic level (empty, or +, #, / or NUL)")
    return name


@dataclass(frozen=True)
class Topics:
    """Every topic of one device, under ``prefix`` (which ends in ``/``)."""

    prefix: str

    def __post_init__(self) -> None:
        problem = _prefix_problem(self.prefix)
        if problem:
            raise ValueError(f"topic prefix {self.prefix!r} {problem}")

    @property
    def status(self) -> str:
        """Retained online / offline (the will) / stopped."""
        return self.prefix + "status"

    @property
    def field(self) -> str:
        """One message per reported field (QoS 1, through the outbox)."""
        return self.prefix + "field"

    @property
    def case(self) -> str:
        """Case summaries (QoS 1, through the outbox)."""
        return self.prefix + "case"

    @property
    def health(self) -> str:
        """Retained ok / degraded / fault with the reasons."""
        return self.prefix + "health"

    @property
    def metrics(self) -> str:
        """Periodic figures (QoS 1, not retained, not queued while offline)."""
        return self.prefix + "metrics"

    @property
    def cmd_filter(self) -> str:
        """What the device subscribes to: every command, but not the replies."""
        return self.prefix + "cmd/+"

    def cmd(self, name: str) -> str:
        """The topic a command ``name`` arrives on."""
        return self.prefix + "cmd/" + _check_level(name)

    def reply(self, name: str) -> str:
        """The topic the reply to command ``name`` goes to."""
        return self.cmd(name) + "/reply"

    def command_of(self, topic: str) -> str | None:
        """The command name of an incoming ``topic``, None if it is not a command topic."""
        head = self.prefix + "cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head):]
        return name if name and "/" not in name else None


# ---------------------------------------------------------------- case ids


def opaque_case_id(raw: str, salt: bytes | None, what: str = "case id") -> str:
    """The case id that may appear in a payload: never a name or a medical record number.

    With the site's ``salt``: ``h-`` and 128 bits of HMAC-SHA256(salt, raw id) in hex, so
    the same case gives the same id on every box of the site and the raw id cannot be
    recovered or guessed without the salt. Without a salt the raw id is used only if it
    already looks opaque (1-64 of ``[A-Za-z0-9_-]``, not all digits: those are usually
    record numbers); anything else is refused with ValueError naming the reason (the raw
    id itself is never repeated in the message: it may identify a patient). ``what``
    names the id in those messages: a HEp-2 slide's id (an accession label) is made
    opaque the same way.
    """
    if not isinstance(raw, str):
        raise ValueError(f"{what}: expected a string, got {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise ValueError(f"{what}: empty")
    if len(text) > MAX_RAW_CASE_ID_CHARS:
        raise ValueError(f"{what}: longer than {MAX_RAW_CASE_ID_CHARS} characters")
    if salt is not None:
        if len(salt) < MIN_SALT_BYTES:
            raise ValueError(f"case id salt: {len(salt)} bytes, need at least {MIN_SALT_BYTES} "
                             "(a short salt lets record numbers be guessed back)")
        digest = hmac.new(salt, text.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return CASE_ID_PREFIX + digest.hexdigest()[:_HASH_HEX_CHARS]
    if not is_opaque_id(text):
        raise ValueError(f"{what}: without mqtt.case_salt_file it must already be opaque "
                         "(1-64 letters, digits, '_' or '-', no spaces); set a per-site salt "
                         "to hash real case numbers")
    if text.isdigit():
        raise ValueError(f"{what}: all digits looks like a medical record number; set "
                         "mqtt.case_salt_file to hash it, or use an opaque id")
    return text


def read_case_salt(path: str) -> bytes | None:
    """The per-site salt from ``mqtt.case_salt_file`` ('' = none); ConfigError if unusable."""
    if not path:
        return None
    try:
        salt = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError("mqtt.case_salt_file",
                          f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(salt) < MIN_SALT_BYTES:
        raise ConfigError("mqtt.case_salt_file", f"{path} holds {len(salt)} bytes; a salt "
                          f"needs at least {MIN_SALT_BYTES} (e.g. `openssl rand -hex 32`)")
    return salt


def new_msg_id() -> str:
    """A fresh message id (random UUID, 32 hex digits): unique across boxes and restarts."""
    return uuid.uuid4().hex


# ---------------------------------------------------------------- payload builders


def iso_utc(t: datetime | None = None) -> str:
    """``t`` (default now) as ISO 8601 UTC with milliseconds; a naive time is refused."""
    if t is None:
        t = datetime.now(timezone.utc)
    elif t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"time {t!r} has no time zone: give an aware datetime (UTC)")
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _envelope(schema: str, device_id: str, now: datetime | None) -> dict[str, Any]:
    return {"schema": schema, "device_id": check_device_id(device_id), "sent_at": iso_utc(now)}


def _check_sha256(what: str, value: str) -> str:
    if not isinstance(value, str) or _SHA256_RE.fullmatch(value) is None:
        raise ValueError(f"{what}: expected 64 lower-case hex digits, got {value!r}")
    return value


def _check_seq(msg_id: str, seq: int) -> None:
    if not is_opaque_id(msg_id):
        raise ValueError(f"msg_id {msg_id!r}: expected 1-64 of [A-Za-z0-9_-]")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError(f"seq {seq!r}: expected an integer >= 0")


def birth(device_id: str, *, models: Sequence[ModelRef], assay: str, config_sha256: str,
          started_at: datetime, software_version: str = __version__,
          now: datetime | None = None) -> dict[str, Any]:
    """The retained ``online`` status published on every connect."""
    if not isinstance(assay, str) or _NAME_RE.fullmatch(assay) is None:
        raise ValueError(f"assay {assay!r}: expected 1-32 of [a-z0-9_]")
    if not software_version:
        raise ValueError("software_version: empty")
    out = _envelope(STATUS_SCHEMA, device_id, now)
    out.update({
        "status": "online",
        "software_version": software_version,
        "assay": assay,
        "models": [
            {"name": m.name, "sha256": _check_sha256(f"model {m.name!r} sha256", m.sha256),
             "precision": m.precision}
            for m in models
        ],
        "config_sha256": _check_sha256("config_sha256", config_sha256),
        "started_at": iso_utc(started_at),
    })
    return out


def will(device_id: str, *, now: datetime | None = None) -> dict[str, Any]:
    """The ``offline`` Last Will: the broker publishes it (retained) when the box vanishes.

    Its ``sent_at`` is when the will was handed to the broker (at connect), not when the
    box went away: consumers should take the time they received it.
    """
    out = _envelope(STATUS_SCHEMA, device_id, now)
    out["status"] = "offline"
    return out


def stopped(device_id: str, *, now: datetime | None = None) -> dict[str, Any]:
    """The retained ``stopped`` status of a clean shutdown (not a failure)."""
    out = _envelope(STATUS_SCHEMA, device_id, now)
    out["status"] = "stopped"
    return out


def field_message(device_id: str, result_json: Mapping[str, Any], *, msg_id: str, seq: int,
                  case_id: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """One reported field: the result JSON under ``result``, with ``msg_id`` and ``seq``.

    ``msg_id`` is unique per message (consumers de-duplicate by it), ``seq`` is the
    device's message sequence (it increases; a gap means a message was dropped and
    recorded). ``case_id`` is the open case's opaque id, or None.
    """
    if not isinstance(result_json, Mapping):
        raise ValueError(f"result: expected the result JSON object, got "
                         f"{type(result_json).__name__}")
    version = result_json.get("schema_version")
    if version != RESULT_SCHEMA_VERSION:
        raise ValueError(f"result: schema_version {version!r}, this contract carries "
                         f"{RESULT_SCHEMA_VERSION!r}")
    _check_seq(msg_id, seq)
    if case_id is not None and not is_opaque_id(case_id):
        raise ValueError("case_id: not opaque (use opaque_case_id)")
    out = _envelope(FIELD_SCHEMA, device_id, now)
    out.update({"msg_id": msg_id, "seq": seq, "case_id": case_id, "result": dict(result_json)})
    return out


def case_message(device_id: str, summary: Mapping[str, Any], *, msg_id: str, seq: int,
                 now: datetime | None = None) -> dict[str, Any]:
    """One case summary under ``case`` (its keys belong to the clinical workflow).

    The summary must carry an opaque ``case_id``; like fields, case messages go through
    the outbox and share the device's ``seq``. A HEp-2 case's (``"assay": "hep2"``) goes
    out as ``eyepiece.hep2-case/1``, a HER2 case's as ``eyepiece.case/1``.
    """
    if not isinstance(summary, Mapping):
        raise ValueError(f"case: expected an object, got {type(summary).__name__}")
    if not is_opaque_id(summary.get("case_id")):
        raise ValueError("case.case_id: missing or not opaque (use opaque_case_id)")
    _check_seq(msg_id, seq)
    schema = HEP2_CASE_SCHEMA if summary.get("assay") == "hep2" else CASE_SCHEMA
    out = _envelope(schema, device_id, now)
    out.update({"msg_id": msg_id, "seq": seq, "case": dict(summary)})
    return out


@dataclass(frozen=True)
class HealthReason:
    """Why the box is not ``ok``: which component, how bad, in words for a technician."""

    component: str
    level: str
    message: str

    def __post_init__(self) -> None:
        if self.component not in HEALTH_COMPONENTS:
            raise ValueError(f"health component {self.component!r} is not one of "
                             f"{', '.join(HEALTH_COMPONENTS)}")
        if self.level not in HEALTH_LEVELS:
            raise ValueError(f"health level {self.level!r} is not one of "
                             f"{', '.join(HEALTH_LEVELS)}")
        if not self.message or len(self.message) > MAX_HEALTH_MESSAGE_CHARS:
            raise ValueError(f"health message for {self.component}: must be 1-"
                             f"{MAX_HEALTH_MESSAGE_CHARS} characters")

    def to_dict(self) -> dict[str, str]:
        """JSON-ready copy."""
        return {"component": self.component, "level": self.level, "message": self.message}


class ReasonLike(Protocol):
    """Anything with a health reason's three attributes (e.g. appliance.service.health.Reason)."""

    @property
    def component(self) -> str: ...

    @property
    def level(self) -> str: ...

    @property
    def message(self) -> str: ...


def as_health_reason(reason: ReasonLike) -> HealthReason:
    """``reason`` checked as a HealthReason; a message too long for the wire is shortened."""
    message = reason.message
    if len(message) > MAX_HEALTH_MESSAGE_CHARS:
        message = message[:MAX_HEALTH_MESSAGE_CHARS - 3] + "..."
    return HealthReason(reason.component, reason.level, message)


def health_state(reasons: Sequence[ReasonLike]) -> str:
    """The box's state from its reasons: the worst level, ``ok`` when there are none.

    The same function decides the LEDs, so the dashboard and the box never disagree.
    """
    worst = 0
    for r in reasons:
        if r.level not in HEALTH_LEVELS:
            raise ValueError(f"health level {r.level!r} is not one of {', '.join(HEALTH_LEVELS)}")
        worst = max(worst, HEALTH_STATES.index(r.level))
    return HEALTH_STATES[worst]


def health(device_id: str, state: str, reasons: Sequence[ReasonLike], *,
           now: datetime | None = None) -> dict[str, Any]:
    """The retained health message; ``state`` must be what ``reasons`` give (health_state).

    ``reasons`` may be HealthReasons or any objects with the same attributes; each is
    checked (as_health_reason), so an unknown component or level is a ValueError.
    """
    if state not in HEALTH_STATES:
        raise ValueError(f"health state {state!r} is not one of {', '.join(HEALTH_STATES)}")
    checked = [as_health_reason(r) for r in reasons]
    expected = health_state(checked)
    if state != expected:
        raise ValueError(f"health state {state!r} contradicts its reasons, which give "
                         f"{expected!r}")
    out = _envelope(HEALTH_SCHEMA, device_id, now)
    out.update({"state": state, "reasons": [r.to_dict() for r in checked]})
    return out


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_system(extra: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``extra`` with every key known and of its type; ValueError naming the key."""
    out: dict[str, Any] = {}
    for key, value in extra.items():
        kind = SYSTEM_KEYS.get(key)
        if kind is None:
            raise ValueError(f"metrics system key {key!r} is unknown (known: "
                             f"{', '.join(SYSTEM_KEYS)})")
        if kind == "object":
            ok = isinstance(value, Mapping) and all(
                isinstance(k, str) and _is_number(v) for k, v in value.items())
        elif kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = _is_number(value) and value >= 0
        if not ok:
            raise ValueError(f"metrics system key {key!r}: expected a non-negative {kind}"
                             f"{' of numbers' if kind == 'object' else ''}, got {value!r}")
        out[key] = dict(value) if kind == "object" else value
    return out


def metrics(device_id: str, snapshot: Mapping[str, Any], extra: Mapping[str, Any], *,
            now: datetime | None = None) -> dict[str, Any]:
    """The periodic metrics: the pipeline's snapshot and the box's readings.

    ``snapshot`` is ``MetricsSnapshot.to_dict()``; ``extra`` holds :data:`SYSTEM_KEYS`
    (:func:`system_readings` plus the outbox figures), each only where known.
    """
    if not isinstance(snapshot, Mapping):
        raise ValueError(f"metrics snapshot: expected an object, got {type(snapshot).__name__}")
    out = _envelope(METRICS_SCHEMA, device_id, now)
    out.update({"pipeline": dict(snapshot), "system": _check_system(extra)})
    return out


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of ``payload``; ValueError naming the reason if it is not JSON."""
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        schema = payload.get("schema", "?") if isinstance(payload, Mapping) else "?"
        raise ValueError(f"cannot encode the {schema} payload as JSON: {exc}") from exc


def load_mqtt_schema(name: str) -> dict[str, Any]:
    """One JSON Schema of docs/mqtt/ by name (``field``, ``cmd-ping``...), for tools and tests."""
    path = SCHEMA_DIR / f"{name}.schema.json"
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OSError(f"cannot read the MQTT schema {path}: {exc}") from exc
    return schema


# ---------------------------------------------------------------- the box's readings


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:  # absent, or a sensor that answers EIO/ENODATA: simply not reported
        return None


def _load_average(proc: Path) -> dict[str, float]:
    text = _read_text(proc / "loadavg")
    try:
        one, five, fifteen = (float(v) for v in (text or "").split()[:3])
    except ValueError:
        return {}
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen}


def _zone_number(path: Path) -> int:
    digits = path.name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else 1 << 30


def _temperatures(sys_root: Path) -> dict[str, float]:
    """Thermal zones by their type (Jetson: CPU-therm, GPU-therm...; Pi: cpu-thermal), °C."""
    temps: dict[str, float] = {}
    zones = sorted((sys_root / "class" / "thermal").glob("thermal_zone*"), key=_zone_number)
    for zone in zones:
        raw = _read_text(zone / "temp")
        try:
            celsius = int(raw or "") / 1000.0
        except ValueError:
            continue
        if not _PLAUSIBLE_C[0] <= celsius <= _PLAUSIBLE_C[1]:
            continue
        name = _HOST_JUNK_RE.sub("-", _read_text(zone / "type") or "") or zone.name
        if name in temps:  # two zones of one type: keep both, told apart by zone
            name = f"{name}.{zone.name}"
        temps[name] = round(celsius, 1)
    return temps


def _gpu_load(sys_root: Path) -> float | None:
    for rel in _GPU_LOAD_FILES:
        raw = _read_text(sys_root / rel)
        if raw is None:
            continue
        try:
            per_mille = float(raw)
        except ValueError:
            continue
        if math.isfinite(per_mille):
            return round(min(max(per_mille / 10.0, 0.0), 100.0), 1)
    return None


def _disk(store_path: Path) -> dict[str, int]:
    # The store file may not exist yet: its nearest existing folder is on the same disk.
    where = store_path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return {}
    return {"disk_free_bytes": int(usage.free), "disk_total_bytes": int(usage.total)}


def system_readings(store_path: str | Path, *, proc_root: str | Path = "/proc",
                    sys_root: str | Path = "/sys") -> dict[str, Any]:
    """What the box can read about itself now; a source that is missing is simply absent.

    CPU load averages (/proc/loadavg), CPU count, thermal zones in °C
    (/sys/class/thermal/thermal_zone*/temp and type), Jetson GPU load in percent, and free
    and total bytes of the filesystem holding ``store_path``. Never raises for a missing
    or unreadable source.
    """
    out: dict[str, Any] = dict(_load_average(Path(proc_root)))
    cpus = os.cpu_count()
    if cpus:
        out["cpu_count"] = cpus
    temps = _temperatures(Path(sys_root))
    if temps:
        out["temperatures_c"] = temps
    gpu = _gpu_load(Path(sys_root))
    if gpu is not None:
        out["gpu_load_percent"] = gpu
    out.update(_disk(Path(store_path)))
    return out
