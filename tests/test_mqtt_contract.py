"""The MQTT contract: every payload builder against its JSON Schema, topics, ids, readings."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from appliance.assays.her2.rules import score_field
from appliance.assays.her2.types import FieldResult, MembraneClass, ModelRef, NotScorable
from appliance.config import ConfigError, Her2Config, MqttConfig, RulesConfig
from appliance.outputs import mqtt_contract as mc
from appliance.outputs.casebook import CaseRow
from appliance.outputs.commands import Command, parse_command
from appliance.outputs.hep2_json import load_schema as load_hep2_schema
from appliance.outputs.mqtt_contract import HealthReason, Topics
from appliance.outputs.result_json import load_schema as load_result_schema
from appliance.outputs.result_json import result_to_dict
from appliance.pipeline.metrics import PipelineMetrics
from appliance.service.case_summary import summarise

NOW = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
STARTED = NOW - timedelta(hours=2)
MODEL = ModelRef(name="her2-cells-unet", sha256="ab" * 32, precision="int8",
                 validated_on="generated data (synthetic H-DAB fields), v1")
SALT = b"0123456789abcdef-site-salt"
PAYLOAD_SCHEMAS = ("status", "field", "case", "hep2-case", "health", "metrics", "reply")


# ------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft202012Validator]:
    """One validator per docs/mqtt schema (:func:`schema_validators`)."""
    return schema_validators()


def schema_validators() -> dict[str, jsonschema.Draft202012Validator]:
    """One validator per docs/mqtt schema; the field schema finds the result schema by $id."""
    result_schema = load_result_schema()
    hep2_schema = load_hep2_schema()
    registry: Registry[Any] = Registry().with_resources([
        (result_schema["$id"], Resource.from_contents(result_schema)),
        (hep2_schema["$id"], Resource.from_contents(hep2_schema))])
    out = {}
    for path in sorted(mc.SCHEMA_DIR.glob("*.schema.json")):
        name = path.name.removesuffix(".schema.json")
        out[name] = jsonschema.Draft202012Validator(mc.load_mqtt_schema(name), registry=registry)
    return out


def errors(validator: jsonschema.Draft202012Validator, doc: Any) -> list[str]:
    """The schema errors of ``doc`` after a JSON round trip (what a consumer receives)."""
    wire = json.loads(mc.encode(doc))
    return [e.message for e in validator.iter_errors(wire)]


def field_result(scored: bool, seq: int = 3) -> dict[str, Any]:
    """A real result JSON from the rule engine: 3+ (40 of 50 cells complete intense) or 0 cells."""
    classes = [MembraneClass.COMPLETE_INTENSE] * 40 + [MembraneClass.NONE] * 10
    verdict = score_field(classes if scored else [], RulesConfig())
    common: dict[str, Any] = dict(file="live:cam0", seq=seq, assay="her2", model=MODEL,
                                  image_width=1280, image_height=960,
                                  created_at="2025-03-14T09:26:50.000+00:00")
    if isinstance(verdict, NotScorable):
        result = FieldResult(status="not_scorable", reason=verdict.reason,
                             reason_code=verdict.code, **common)
    else:
        result = FieldResult(status="scored", score=verdict.score, category=verdict.category,
                             rule=verdict.rule, tumour_cells=verdict.tumour_cells,
                             percent=verdict.percent, **common)
    return result_to_dict(result)


# ------------------------------------------------------------------------ schemas


def test_every_schema_file_is_a_valid_2020_12_schema() -> None:
    names = {p.name for p in mc.SCHEMA_DIR.glob("*.schema.json")}
    for name in PAYLOAD_SCHEMAS:
        assert f"{name}.schema.json" in names
    for path in mc.SCHEMA_DIR.glob("*.schema.json"):
        schema = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"].endswith(path.name.removesuffix(".schema.json") + "/1")


def test_docs_examples_validate(validators: dict[str, Any]) -> None:
    # The dashboard team copies from docs/mqtt.md: every example must stay valid.
    text = (mc.SCHEMA_DIR.parent / "mqtt.md").read_text(encoding="utf-8")
    blocks = re.findall(r"(?:<!-- cmd:(\w+) -->\n)?```json\n(.*?)```", text, flags=re.DOTALL)
    kinds = []
    for command, block in blocks:
        doc = json.loads(block)
        if command:
            kind = f"cmd-{command}"
            assert isinstance(parse_command(command, block.encode(), max_bytes=4096), Command)
        else:
            kind = doc["schema"].removeprefix("eyepiece.").removesuffix("/1")
        assert [e.message for e in validators[kind].iter_errors(doc)] == [], kind
        kinds.append(kind)
    assert set(PAYLOAD_SCHEMAS) <= set(kinds)


def test_missing_schema_is_named() -> None:
    with pytest.raises(OSError, match=r"nope\.schema\.json"):
        mc.load_mqtt_schema("nope")


# ------------------------------------------------------------------------ status


def test_birth_validates_and_carries_what_the_fleet_needs(validators: dict[str, Any]) -> None:
    doc = mc.birth("box-1", models=[MODEL], assay="her2", config_sha256="cd" * 32,
                   started_at=STARTED, now=NOW)
    assert errors(validators["status"], doc) == []
    assert doc["schema"] == "eyepiece.status/1" and doc["status"] == "online"
    assert doc["models"] == [{"name": MODEL.name, "sha256": MODEL.sha256, "precision": "int8"}]
    assert doc["sent_at"] == "2025-03-14T09:26:53.589+00:00"
    assert doc["started_at"] == "2025-03-14T07:26:53.589+00:00"
    assert doc["software_version"] == mc.__version__


def test_birth_with_no_model_loaded_still_validates(validators: dict[str, Any]) -> None:
    doc = mc.birth("box-1", models=[], assay="her2", config_sha256="cd" * 32,
                   started_at=STARTED, now=NOW)
    assert errors(validators["status"], doc) == []


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"config_sha256": "CD" * 32}, "config_sha256"),
    ({"models": [ModelRef("m", "xyz", "int8", "v")]}, "model 'm' sha256"),
    ({"assay": "HER 2"}, "assay"),
    ({"started_at": datetime(2025, 1, 1)}, "no time zone"),
])
def test_birth_refuses_bad_values_by_name(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = dict(models=[MODEL], assay="her2", config_sha256="cd" * 32,
                                started_at=STARTED, now=NOW)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mc.birth("box-1", **args)


def test_will_and_stopped_validate_and_carry_nothing_else(validators: dict[str, Any]) -> None:
    for doc, status in ((mc.will("box-1", now=NOW), "offline"),
                        (mc.stopped("box-1", now=NOW), "stopped")):
        assert errors(validators["status"], doc) == []
        assert set(doc) == {"schema", "device_id", "sent_at", "status"}
        assert doc["status"] == status


def test_status_schema_has_teeth(validators: dict[str, Any]) -> None:
    online = mc.birth("box-1", models=[MODEL], assay="her2", config_sha256="cd" * 32,
                      started_at=STARTED, now=NOW)
    del online["started_at"]
    assert errors(validators["status"], online)
    offline = mc.will("box-1", now=NOW)
    offline["assay"] = "her2"  # birth fields do not belong in a will
    assert errors(validators["status"], offline)


# ------------------------------------------------------------------------ field and case


@pytest.mark.parametrize("scored", [True, False])
@pytest.mark.parametrize("case_id", [None, "h-0123abcd", "CASE_7"])
def test_field_message_validates_with_the_result_schema(
        validators: dict[str, Any], scored: bool, case_id: str | None) -> None:
    result = field_result(scored)
    doc = mc.field_message("box-1", result, msg_id=mc.new_msg_id(), seq=17, case_id=case_id,
                           now=NOW)
    assert errors(validators["field"], doc) == []
    assert doc["result"] == result and doc["seq"] == 17 and doc["case_id"] == case_id


def test_field_schema_checks_the_result_inside(validators: dict[str, Any]) -> None:
    doc = mc.field_message("box-1", field_result(True), msg_id="m1", seq=0, now=NOW)
    doc["result"]["score"] = "4+"
    assert errors(validators["field"], doc)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"msg_id": "has space"}, "msg_id"),
    ({"msg_id": ""}, "msg_id"),
    ({"seq": -1}, "seq"),
    ({"seq": True}, "seq"),
    ({"case_id": "Jane Doe"}, "case_id"),
])
def test_field_message_refuses_bad_ids(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"msg_id": "m1", "seq": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        mc.field_message("box-1", field_result(True), **args)


def test_field_message_refuses_what_is_not_a_result_json() -> None:
    with pytest.raises(ValueError, match="schema_version"):
        mc.field_message("box-1", {"score": "3+"}, msg_id="m1", seq=1)
    with pytest.raises(ValueError, match="result"):
        mc.field_message("box-1", [1, 2], msg_id="m1", seq=1)  # type: ignore[arg-type]


def test_case_message_validates_and_needs_an_opaque_case_id(validators: dict[str, Any]) -> None:
    case = CaseRow(case_id="h-00ff", opened_at="2025-03-14T09:20:00.000+00:00",
                   opened_by="mqtt", closed_at="2025-03-14T09:41:02.000+00:00",
                   closed_by="mqtt", mode="tumour", control_expected=None, control_round=0,
                   summary=None)
    summary = summarise(case, [], [], Her2Config()).to_dict()
    doc = mc.case_message("box-1", summary, msg_id="m2", seq=18, now=NOW)
    assert errors(validators["case"], doc) == []
    assert errors(validators["case"], mc.case_message(
        "box-1", {"case_id": "h-00ff", "fields": 12}, msg_id="m2", seq=18, now=NOW)) != []
    for bad in ({"fields": 3}, {"case_id": "MRN 12345"}):
        with pytest.raises(ValueError, match=r"case\.case_id"):
            mc.case_message("box-1", bad, msg_id="m2", seq=18)


# ------------------------------------------------------------------------ health


def test_health_states_validate(validators: dict[str, Any]) -> None:
    warm = HealthReason("temperature", "degraded", "CPU at 83.0 °C")
    lost = HealthReason("camera", "fault", "no frame for 2.0 s; reopening")
    for state, reasons in (("ok", []), ("degraded", [warm]), ("fault", [warm, lost])):
        doc = mc.health("box-1", state, reasons, now=NOW)
        assert errors(validators["health"], doc) == []
        assert doc["reasons"] == [r.to_dict() for r in reasons]


def test_health_state_is_the_worst_reason() -> None:
    warm = HealthReason("temperature", "degraded", "hot")
    lost = HealthReason("camera", "fault", "gone")
    assert mc.health_state([]) == "ok"
    assert mc.health_state([warm, warm]) == "degraded"
    assert mc.health_state([warm, lost]) == "fault"
    assert mc.health_state([lost, warm]) == "fault"


def test_health_refuses_a_state_its_reasons_contradict() -> None:
    warm = HealthReason("disk", "degraded", "outbox 60 % full")
    with pytest.raises(ValueError, match="contradicts"):
        mc.health("box-1", "ok", [warm])
    with pytest.raises(ValueError, match="contradicts"):
        mc.health("box-1", "fault", [warm])
    with pytest.raises(ValueError, match="not one of"):
        mc.health("box-1", "fine", [])


@pytest.mark.parametrize(("args", "match"), [
    (("gpu", "fault", "x"), "component"),
    (("camera", "warning", "x"), "level"),
    (("camera", "fault", ""), "message"),
    (("camera", "fault", "x" * 301), "message"),
])
def test_health_reason_is_checked(args: tuple[str, str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HealthReason(*args)


@dataclass(frozen=True)
class Reason:
    """A reason type of another module (the health rules keep their own)."""

    component: str
    level: str
    message: str


def test_health_takes_any_reason_type_and_shortens_long_messages(
        validators: dict[str, Any]) -> None:
    long = Reason("broker", "degraded", "connection refused: " + "x" * 400)
    doc = mc.health("box-1", "degraded", [long], now=NOW)
    assert errors(validators["health"], doc) == []
    message = doc["reasons"][0]["message"]
    assert len(message) == mc.MAX_HEALTH_MESSAGE_CHARS and message.endswith("...")
    with pytest.raises(ValueError, match="component"):
        mc.health("box-1", "fault", [Reason("gpu", "fault", "x")])


def test_health_schema_has_teeth(validators: dict[str, Any]) -> None:
    doc = mc.health("box-1", "degraded", [HealthReason("broker", "degraded", "offline")],
                    now=NOW)
    doc["state"] = "ok"
    assert errors(validators["health"], doc)
    doc["state"] = "fault"
    assert errors(validators["health"], doc)


# ------------------------------------------------------------------------ metrics


def fake_box(root: Path) -> tuple[Path, Path]:
    """A /proc and /sys laid out like a Jetson Orin's, with the usual oddities."""
    proc, sys_root = root / "proc", root / "sys"
    proc.mkdir(parents=True)
    (proc / "loadavg").write_text("1.52 0.98 0.40 3/512 12345\n")
    thermal = sys_root / "class" / "thermal"
    zones = {
        "thermal_zone0": ("CPU-therm", "48500\n"),
        "thermal_zone1": ("GPU-therm", "46250\n"),
        "thermal_zone2": ("CPU-therm", "49000\n"),  # a second zone of one type
        "thermal_zone3": ("PMIC-Die", "-256000\n"),  # an error code, not a temperature
        "thermal_zone4": ("tj-therm", "garbage\n"),
        "thermal_zone10": ("SOC-therm", "51125\n"),
    }
    for zone, (kind, temp) in zones.items():
        (thermal / zone).mkdir(parents=True)
        (thermal / zone / "type").write_text(kind + "\n")
        (thermal / zone / "temp").write_text(temp)
    (thermal / "thermal_zone5").mkdir()
    (thermal / "thermal_zone5" / "temp").mkdir()  # unreadable: EISDIR
    gpu = sys_root / "devices" / "platform" / "17000000.ga10b"
    gpu.mkdir(parents=True)
    (gpu / "load").write_text("372\n")
    return proc, sys_root


def test_system_readings_from_a_jetson_like_tree(tmp_path: Path) -> None:
    proc, sys_root = fake_box(tmp_path)
    store = tmp_path / "var" / "not-yet" / "results.sqlite"  # does not exist yet
    got = mc.system_readings(store, proc_root=proc, sys_root=sys_root)
    assert (got["load_1m"], got["load_5m"], got["load_15m"]) == (1.52, 0.98, 0.40)
    assert got["temperatures_c"] == {"CPU-therm": 48.5, "GPU-therm": 46.2,
                                     "CPU-therm.thermal_zone2": 49.0, "SOC-therm": 51.1}
    assert got["gpu_load_percent"] == 37.2
    assert 0 < got["disk_free_bytes"] <= got["disk_total_bytes"]
    assert got["cpu_count"] == os.cpu_count()


def test_missing_sources_are_simply_absent(tmp_path: Path) -> None:
    got = mc.system_readings(tmp_path / "r.sqlite", proc_root=tmp_path / "no-proc",
                             sys_root=tmp_path / "no-sys")
    assert set(got) == {"cpu_count", "disk_free_bytes", "disk_total_bytes"}


def test_system_readings_on_this_machine_do_not_raise(tmp_path: Path) -> None:
    got = mc.system_readings(tmp_path / "results.sqlite")
    assert "disk_free_bytes" in got
    assert set(got) <= set(mc.SYSTEM_KEYS)


def pipeline_snapshot(samples: bool) -> dict[str, object]:
    m = PipelineMetrics(64, started_at=0.0)
    if samples:
        for i in range(30):
            t = i * 0.1
            m.frame_captured(t)
            m.stage_time("prepare", 12.0 + i % 3)
            m.stage_time("model", 40.0 + i % 5)
            m.result_done(t, t + 0.06)
        m.frame_dropped("display")
        m.field_reported()
        m.set_queue_depth("prepare", 1)
        m.set_source("streaming", 2)
    return m.snapshot(3.0).to_dict()


@pytest.mark.parametrize("samples", [True, False])
def test_metrics_validate_with_a_real_snapshot(tmp_path: Path, validators: dict[str, Any],
                                               samples: bool) -> None:
    proc, sys_root = fake_box(tmp_path)
    extra = mc.system_readings(tmp_path, proc_root=proc, sys_root=sys_root)
    extra.update(outbox_depth=12, outbox_capacity=200000, outbox_dropped=0)
    doc = mc.metrics("box-1", pipeline_snapshot(samples), extra, now=NOW)
    assert errors(validators["metrics"], doc) == []
    assert doc["system"]["outbox_depth"] == 12
    assert doc["pipeline"]["latency_ms"]["p50"] == (60.0 if samples else None)


@pytest.mark.parametrize(("extra", "match"), [
    ({"outbox_deepth": 3}, "outbox_deepth"),
    ({"outbox_depth": -1}, "outbox_depth"),
    ({"outbox_depth": 2.5}, "outbox_depth"),
    ({"load_1m": float("nan")}, "load_1m"),
    ({"temperatures_c": {"cpu": "hot"}}, "temperatures_c"),
])
def test_metrics_refuse_unknown_or_wrong_extra(extra: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mc.metrics("box-1", pipeline_snapshot(False), extra)


# ------------------------------------------------------------------------ encode


def test_encode_is_compact_utf8_and_round_trips() -> None:
    doc = mc.health("box-1", "degraded", [HealthReason("temperature", "degraded", "83 °C")],
                    now=NOW)
    raw = mc.encode(doc)
    assert b" " not in raw.replace(b"83 \xc2\xb0C", b"")
    assert "°".encode() in raw
    assert json.loads(raw.decode("utf-8")) == doc


def test_encode_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError, match=r"eyepiece\.metrics/1"):
        mc.encode({"schema": "eyepiece.metrics/1", "x": float("inf")})
    with pytest.raises(ValueError, match="cannot encode"):
        mc.encode({"x": {1, 2}})


# ------------------------------------------------------------------------ topics


def test_topics_of_the_default_prefix() -> None:
    t = Topics(mc.topic_prefix(MqttConfig(), "jetson-7"))
    assert t.prefix == "eyepiece/jetson-7/"
    assert (t.status, t.field, t.case, t.health, t.metrics) == (
        "eyepiece/jetson-7/status", "eyepiece/jetson-7/field", "eyepiece/jetson-7/case",
        "eyepiece/jetson-7/health", "eyepiece/jetson-7/metrics")
    assert t.cmd("ping") == "eyepiece/jetson-7/cmd/ping"
    assert t.reply("ping") == "eyepiece/jetson-7/cmd/ping/reply"
    assert t.cmd_filter == "eyepiece/jetson-7/cmd/+"


def test_command_of_reads_only_command_topics() -> None:
    t = Topics("site/a/box-1/")
    assert t.command_of("site/a/box-1/cmd/start_case") == "start_case"
    assert t.command_of("site/a/box-1/cmd/start_case/reply") is None
    assert t.command_of("site/a/box-1/cmd/") is None
    assert t.command_of("site/a/box-2/cmd/ping") is None
    assert t.command_of(t.cmd("snapshot")) == "snapshot"


@pytest.mark.parametrize("name", ["", "a/b", "+", "#", "x\x00"])
def test_command_names_must_be_one_level(name: str) -> None:
    with pytest.raises(ValueError, match="topic level"):
        Topics("eyepiece/b/").cmd(name)


@pytest.mark.parametrize(("prefix", "match"), [
    ("", "end with '/'"),
    ("eyepiece/box", "end with '/'"),
    ("$SYS/box/", r"\$"),
    ("eyepiece/+/", "wildcard"),
    ("eyepiece/#/", "wildcard"),
    ("eyepiece//box/", "empty topic level"),
    ("/eyepiece/box/", "empty topic level"),
    ("eyepiece/{site}/box/", "placeholder"),
])
def test_bad_prefixes_are_refused(prefix: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Topics(prefix)


def test_configured_device_id_and_prefix_are_used() -> None:
    cfg = MqttConfig(device_id="scope-3", topic_prefix="hospital/path/{device_id}")
    assert mc.topic_prefix(cfg, "ignored-host") == "hospital/path/scope-3/"
    assert mc.device_id_for(cfg, "ignored-host") == "scope-3"


def test_host_names_are_sanitised() -> None:
    cfg = MqttConfig()
    assert mc.device_id_for(cfg, "Jetson Orin #2") == "Jetson-Orin-2"
    assert mc.device_id_for(cfg, "box.lab.example.org") == "box.lab.example.org"
    assert mc.device_id_for(cfg, "-x/y+z") == "x-y-z"
    assert len(mc.device_id_for(cfg, "a" * 200)) == 64
    with pytest.raises(ConfigError, match=r"mqtt\.device_id"):
        mc.device_id_for(cfg, "###")


@pytest.mark.parametrize(("device_id", "match"), [
    ("a+b", r"'\+'"), ("a#b", "'#'"), ("a/b", "'/'"), ("-box", "letter or digit"),
    ("b\u00f6x", "letters, digits"), ("x" * 65, "1-64"),
])
def test_configured_device_ids_are_refused_not_changed(device_id: str, match: str) -> None:
    # Built directly, so the config loader's own check is bypassed: the contract still refuses.
    with pytest.raises(ConfigError, match=match) as info:
        mc.topic_prefix(MqttConfig(device_id=device_id), "host")
    assert info.value.key == "mqtt.device_id"


def test_a_prefix_that_breaks_topics_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        mc.topic_prefix(MqttConfig(topic_prefix="$SYS/{device_id}/"), "host")
    assert info.value.key == "mqtt.topic_prefix"


# ------------------------------------------------------------------------ case ids


def test_salted_case_ids_are_stable_opaque_and_site_specific() -> None:
    a = mc.opaque_case_id("S25-04711 B2", SALT)
    assert a == mc.opaque_case_id("  S25-04711 B2\n", SALT)  # stray whitespace: same case
    assert a.startswith("h-") and mc.is_opaque_id(a) and len(a) == 34
    assert a != mc.opaque_case_id("S25-04712 B2", SALT)
    assert a != mc.opaque_case_id("S25-04711 B2", SALT[::-1])
    assert "04711" not in a


def test_unsalted_case_ids_must_already_be_opaque() -> None:
    assert mc.opaque_case_id("c_8f3a-77", None) == "c_8f3a-77"
    for raw in ("Jane Doe", "S25/04711", "x" * 65, "Müller-4"):
        with pytest.raises(ValueError, match="opaque") as info:
            mc.opaque_case_id(raw, None)
        assert raw not in str(info.value)  # the refused id is never repeated
    with pytest.raises(ValueError, match="medical record number"):
        mc.opaque_case_id("1234567", None)


@pytest.mark.parametrize(("raw", "salt", "match"), [
    ("", SALT, "empty"),
    ("   ", None, "empty"),
    ("x" * 129, SALT, "longer than 128"),
    ("abc", b"short", "at least 16"),
])
def test_case_id_edge_cases(raw: str, salt: bytes | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mc.opaque_case_id(raw, salt)


def test_case_salt_file(tmp_path: Path) -> None:
    assert mc.read_case_salt("") is None
    good = tmp_path / "salt"
    good.write_bytes(SALT + b"\n")
    assert mc.read_case_salt(str(good)) == SALT
    short = tmp_path / "short"
    short.write_bytes(b"abc\n")
    with pytest.raises(ConfigError, match="at least 16"):
        mc.read_case_salt(str(short))
    with pytest.raises(ConfigError, match="cannot read"):
        mc.read_case_salt(str(tmp_path / "missing"))


def test_message_ids_are_unique_and_opaque() -> None:
    ids = {mc.new_msg_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(mc.is_opaque_id(i) for i in ids)
