"""Commands: parsing and validation, the runtime checker against the JSON Schemas, replies,
the dispatcher, and 1,000 malformed payloads that must all get an error reply."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import jsonschema
import pytest

from appliance.outputs import commands as cm
from appliance.outputs.commands import (
    Command,
    CommandDispatcher,
    CommandError,
    CommandRefused,
    parse_command,
    refuse,
    reply,
)
from appliance.outputs.mqtt_contract import Topics, encode, load_mqtt_schema

MAX = 16384
NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def cmd_validators() -> dict[str, jsonschema.Draft202012Validator]:
    return {name: jsonschema.Draft202012Validator(load_mqtt_schema(f"cmd-{name}"))
            for name in cm.COMMANDS}


@pytest.fixture(scope="module")
def reply_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_mqtt_schema("reply"))


def parse(name: str, obj: Any, max_bytes: int = MAX) -> Command | CommandError:
    return parse_command(name, json.dumps(obj).encode(), max_bytes=max_bytes)


def must_fail(name: str, payload: bytes, max_bytes: int = MAX) -> CommandError:
    got = parse_command(name, payload, max_bytes=max_bytes)
    assert isinstance(got, CommandError), f"{name} {payload[:80]!r} was accepted"
    return got


# ------------------------------------------------------------------------ valid commands


@pytest.mark.parametrize(("name", "obj", "args"), [
    ("start_case", {"case_id": "S25-04711 B2"}, {"case_id": "S25-04711 B2"}),
    ("start_case", {"case_id": "c1", "assay": "her2", "request_id": "r-1"},
     {"case_id": "c1", "assay": "her2"}),
    ("end_case", {"case_id": "c1"}, {"case_id": "c1"}),
    ("set_assay", {"assay": "her2"}, {"assay": "her2"}),
    ("set_objective", {"objective": "40x"}, {"objective": "40x"}),
    ("set_objective", {"objective": "auto"}, {"objective": "auto"}),
    ("set_objective", {"um_per_px": 0.345}, {"um_per_px": 0.345}),
    ("set_objective", {"um_per_px": 10}, {"um_per_px": 10.0}),
    ("snapshot", {}, {}),
    ("reload_config", {"request_id": "2f1c:7.a_b-c"}, {}),
    ("ping", {}, {}),
])
def test_valid_commands_parse(name: str, obj: dict[str, Any], args: dict[str, Any]) -> None:
    got = parse(name, obj)
    assert isinstance(got, Command), got
    assert got.name == name
    assert dict(got.args) == args
    assert got.request_id == obj.get("request_id")
    if "um_per_px" in args:
        assert isinstance(got.args["um_per_px"], float)


def test_whitespace_and_key_order_do_not_matter() -> None:
    got = parse_command("start_case", b' \n{ "request_id" : "a",\t"case_id":"c9" }\n',
                        max_bytes=MAX)
    assert got == Command("start_case", {"case_id": "c9"}, "a")


# ------------------------------------------------------------------------ errors, one by one


@pytest.mark.parametrize(("name", "payload", "field", "reason"), [
    ("reboot", b"{}", "(command)", "unknown command 'reboot'"),
    ("ping", b"{" + b" " * MAX + b"}", "(payload)", "more than the limit of 16384"),
    ("ping", b'{"request_id": "\xff"}', "(payload)", "not UTF-8"),
    ("ping", b"", "(payload)", "empty"),
    ("ping", b"{'a': 1}", "(payload)", "not JSON"),
    ("ping", b'{"request_id": "a"', "(payload)", "not JSON"),
    ("ping", b"[]", "(payload)", "expected a JSON object, got array"),
    ("ping", b'"ping"', "(payload)", "expected a JSON object, got string"),
    ("ping", b"null", "(payload)", "expected a JSON object, got null"),
    ("ping", b'{"a": 1, "a": 2}', "(payload)", "duplicate key 'a'"),
    ("set_objective", b'{"um_per_px": NaN}', "(payload)", "NaN is not JSON"),
    ("set_objective", b'{"um_per_px": 1e999}', "(payload)", "out of range"),
    ("ping", b"[" * 8000 + b"]" * 8000, "(payload)", "nested too deeply"),
    ("ping", b'{"x": ' + b"9" * 5000 + b"}", "(payload)", "not usable JSON"),
    ("ping", b'{"verbose": true}', "verbose", "unknown field"),
    ("start_case", b"{}", "case_id", "missing (required)"),
    ("start_case", b'{"case_id": 42}', "case_id", "expected a string, got number"),
    ("start_case", b'{"case_id": ""}', "case_id", "empty"),
    ("start_case", b'{"case_id": "a\\nb"}', "case_id", "control characters"),
    ("start_case", b'{"case_id": "c", "assay": "ER"}', "assay", "'ER' is not one of her2"),
    ("set_assay", b'{"assay": ["her2"]}', "assay", "expected a string, got array"),
    ("set_objective", b"{}", "objective", "missing: give objective or um_per_px"),
    ("set_objective", b'{"objective": "40x", "um_per_px": 0.25}', "um_per_px", "not both"),
    ("set_objective", b'{"objective": "63x"}', "objective", "not one of 10x, 20x, 40x, auto"),
    ("set_objective", b'{"um_per_px": 0}', "um_per_px", "not above 0"),
    ("set_objective", b'{"um_per_px": 10.5}', "um_per_px", "above the maximum 10"),
    ("set_objective", b'{"um_per_px": true}', "um_per_px", "expected a number, got boolean"),
    ("set_objective", b'{"um_per_px": "0.5"}', "um_per_px", "expected a number, got string"),
    ("ping", b'{"request_id": 7}', "request_id", "expected a string"),
    ("ping", b'{"request_id": null}', "request_id", "expected a string, got null"),
    ("ping", b'{"request_id": "has space"}', "request_id", "only letters, digits"),
    ("ping", ('{"request_id": "' + "r" * 65 + '"}').encode(), "request_id", "longer than 64"),
])
def test_errors_name_the_field_and_the_reason(name: str, payload: bytes, field: str,
                                              reason: str) -> None:
    err = must_fail(name, payload)
    assert err.field == field
    assert reason in err.reason, err.reason
    assert err.message.startswith(field)


def test_the_request_id_is_echoed_once_it_is_valid() -> None:
    err = must_fail("set_assay", b'{"request_id": "q-7", "assay": "hep3"}')
    assert (err.field, err.request_id) == ("assay", "q-7")
    err = must_fail("set_assay", b'{"request_id": "q 7", "assay": "her2"}')
    assert (err.field, err.request_id) == ("request_id", None)


def test_a_bad_case_id_is_never_repeated() -> None:
    secret = "Jane Doe\t1957-02-01"
    for name in ("start_case", "end_case"):
        err = must_fail(name, json.dumps({"case_id": secret}).encode())
        assert err.field == "case_id"
        assert "Jane" not in err.reason and "1957" not in err.reason


def test_untrusted_text_in_errors_is_short_and_ascii() -> None:
    err = must_fail("ping", json.dumps({"\u00e9" * 500: 1}).encode())
    assert err.field is not None and err.field.isascii() and len(err.field) <= 40
    err = must_fail("ping\u00e9" + "x" * 300, b"{}")
    assert err.command.isascii() and len(err.command) <= 64 and err.reason.isascii()


# ------------------------------------------------------------------------ checker == schema

KEYS = ("case_id", "assay", "objective", "um_per_px", "expected", "dilution", "request_id",
        "extra",
        "Case_id", "")
STRINGS = ("her2", "HER2", "", "10x", "20x", "40x", "auto", "63x", "c1", "a b", "S25/04711",
           "r-1.2:3_x", "x" * 64, "x" * 65, "y" * 128, "y" * 129, "tab\there", "abc\n", "\x7f",
           "\x1f", "\x00", "\u00e9", "\u2028", "\ud800", "0.5", " her2")
NUMBERS = (0, -0.0, 1e-9, 0.25, 1, 3, 9.999, 10, 10.0, 10.000001, 11, -1, 1e308, 10**30)
OTHERS: tuple[Any, ...] = (None, True, False, [], ["her2"], {}, {"a": 1})
VALID: dict[str, list[dict[str, Any]]] = {
    "start_case": [{"case_id": "c1"}, {"case_id": "S 1", "assay": "her2"}],
    "end_case": [{"case_id": "c1"}],
    "start_control": [{}, {"expected": "3+"}, {"expected": "1+"}, {"expected": "AC-1"},
                      {"expected": "negative"}],
    "end_control": [{}],
    "set_dilution": [{"dilution": 160}, {"dilution": 80.0}],
    "set_assay": [{"assay": "her2"}],
    "set_objective": [{"objective": "20x"}, {"um_per_px": 0.5}],
    "snapshot": [{}],
    "reload_config": [{}],
    "ping": [{}],
}


BOUNDARIES: dict[str, tuple[Any, ...]] = {  # values near each field's own rules
    "case_id": ("c", "y" * 128, "y" * 129, "", "a\x1fb", "a\x7f", "abc\n", "\u00e9 1", 7),
    "assay": ("her2", "hep2", "HER2", "her2 ", "hep-2", "", None),
    "expected": ("0", "1+", "2+", "3+", "3", "4+", "+3", "", 3, None, "AC-1", "negative",
                 "fine speckled", "x" * 40, "x" * 41, "AC/1", "a\nb", "\u00e9"),
    "objective": ("10x", "20x", "40x", "auto", "Auto", "63x", "", 40),
    "um_per_px": NUMBERS,
    "dilution": (2, 1, 0, 80, 160, 160.0, 160.5, 100_000, 100_001, -80, "160", True, None,
                 1e308),
    "request_id": ("r", "a" * 64, "a" * 65, "r 1", "r\n", "", "q:1.2_3-x", 5, None),
}


def random_value(rng: random.Random, key: str = "") -> Any:
    if key in BOUNDARIES and rng.random() < 0.7:
        return rng.choice(BOUNDARIES[key])
    pool = rng.choice((STRINGS, STRINGS, NUMBERS, OTHERS))
    return rng.choice(pool)


def random_instance(rng: random.Random, name: str) -> Any:
    """A payload near the command's rules: a valid one, mutated zero to three times."""
    roll = rng.random()
    if roll < 0.05:
        return random_value(rng)  # not an object at all
    obj = dict(rng.choice(VALID[name]))
    if rng.random() < 0.3:
        obj["request_id"] = random_value(rng, "request_id")
    own = [*cm.SPECS[name].fields, "request_id"]
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        # Mostly the command's own fields, where the boundaries are.
        key = rng.choice(own) if rng.random() < 0.6 else rng.choice(KEYS)
        if rng.random() < 0.2:
            obj.pop(key, None)
        else:
            obj[key] = random_value(rng, key)
    return obj


def corpus(seed: int, per_command: int) -> Iterator[tuple[str, Any]]:
    rng = random.Random(seed)
    for name in cm.COMMANDS:
        for _ in range(per_command):
            yield name, random_instance(rng, name)


def test_runtime_checker_agrees_with_the_json_schemas(
        cmd_validators: dict[str, jsonschema.Draft202012Validator]) -> None:
    valid = invalid = 0
    for name, instance in corpus(seed=4, per_command=1500):
        by_schema = cmd_validators[name].is_valid(instance)
        got = parse(name, instance, max_bytes=10**6)
        assert isinstance(got, Command) == by_schema, (name, instance, got)
        valid += by_schema
        invalid += not by_schema
    # Both sides of the boundary are well covered, not just one.
    assert valid > 2000 and invalid > 2000, (valid, invalid)


def test_every_command_has_a_schema_with_the_same_fields() -> None:
    for name in cm.COMMANDS:
        schema = load_mqtt_schema(f"cmd-{name}")
        assert set(schema["properties"]) == {*cm.SPECS[name].fields, "request_id"}
        assert set(schema.get("required", ())) == set(cm.SPECS[name].required)
        assert schema["additionalProperties"] is False


# ------------------------------------------------------------------------ 1,000 malformed


def malformed(rng: random.Random, validators: dict[str, jsonschema.Draft202012Validator]
              ) -> tuple[str, bytes]:
    """One command that must be refused, of a randomly chosen kind."""
    name = rng.choice(cm.COMMANDS)
    kind = rng.randrange(9)
    good = json.dumps(rng.choice(VALID[name])).encode()
    if kind == 0:  # oversized
        pad = "p" * rng.randint(MAX, 2 * MAX)
        return name, json.dumps({"request_id": "r", "pad": pad}).encode()
    if kind == 1:  # not UTF-8
        cut = rng.randrange(len(good) + 1)
        return name, good[:cut] + bytes([rng.choice((0x80, 0xC3, 0xFF, 0xFE))]) + good[cut:]
    if kind == 2:  # truncated or garbage
        if len(good) > 2 and rng.random() < 0.5:
            return name, good[:rng.randrange(1, len(good) - 1)]
        return name, bytes(rng.choice(b"{}[]:,\"' abc01") for _ in range(rng.randint(1, 40)))
    if kind == 3:  # JSON but not an object
        return name, json.dumps(rng.choice((None, 1, 2.5, "x", [], [{}], True))).encode()
    if kind == 4:  # unknown command
        return rng.choice(("reboot", "PING", "ping ", "start-case", "", "\u00e9", "x" * 99)), good
    if kind == 5:  # duplicate keys
        return name, b'{"request_id": "a", "request_id": "a"}'
    if kind == 6:  # non-finite numbers and absurd nesting
        return name, rng.choice((b'{"um_per_px": NaN}', b'{"um_per_px": -Infinity}',
                                 b'{"um_per_px": 1e400}', b"[" * 3000 + b"]" * 3000))
    while True:  # wrong types, unknown or missing fields: whatever the schema refuses
        instance = random_instance(rng, name)
        if not validators[name].is_valid(instance):
            return name, json.dumps(instance).encode()


def test_a_thousand_malformed_commands_all_get_error_replies(
        cmd_validators: dict[str, jsonschema.Draft202012Validator],
        reply_validator: jsonschema.Draft202012Validator,
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Command] = []

    def spy(command: Command) -> dict[str, Any]:
        calls.append(command)
        return {}

    dispatcher = CommandDispatcher({n: spy for n in cm.COMMANDS}, device_id="box-1",
                                   max_bytes=MAX)
    rng = random.Random(11)
    fields: set[str | None] = set()
    with caplog.at_level(logging.ERROR):
        for _ in range(1000):
            name, payload = malformed(rng, cmd_validators)
            assert isinstance(parse_command(name, payload, max_bytes=MAX), CommandError)
            out = dispatcher.handle(name, payload)
            wire = json.loads(encode(out))
            assert reply_validator.is_valid(wire), (name, payload[:100], wire)
            assert out["ok"] is False and out["result"] is None
            fields.add(out["error"]["field"])
    assert calls == []  # a malformed command changes nothing
    assert not caplog.records  # refused, not failed: nothing reaches the error log
    assert {"(payload)", "(command)", "case_id", "request_id"} <= fields


# ------------------------------------------------------------------------ replies


def test_replies_validate(reply_validator: jsonschema.Draft202012Validator) -> None:
    ok = parse("start_case", {"case_id": "c1", "request_id": "r9"})
    assert isinstance(ok, Command)
    done = reply(ok, ok=True, device_id="box-1", result={"case_id": "h-0a"}, now=NOW)
    refused = reply(refuse(ok, "a case is already open", field="case_id"), ok=False,
                    device_id="box-1", now=NOW)
    malformed_reply = reply(must_fail("ping", b"[]"), ok=False, device_id="box-1")
    for doc in (done, refused, malformed_reply):
        assert reply_validator.is_valid(json.loads(encode(doc))), doc
    assert done["request_id"] == "r9" and done["result"] == {"case_id": "h-0a"}
    assert done["error"] is None and done["sent_at"] == "2025-03-14T09:26:53.000+00:00"
    assert refused["request_id"] == "r9"
    assert refused["error"] == {"field": "case_id", "reason": "a case is already open"}
    assert reply(ok, ok=True, device_id="box-1")["result"] == {}


def test_reply_schema_has_teeth(reply_validator: jsonschema.Draft202012Validator) -> None:
    doc = reply(must_fail("ping", b"[]"), ok=False, device_id="box-1")
    doc["ok"] = True
    assert not reply_validator.is_valid(doc)


def test_reply_refuses_contradictions() -> None:
    ok = Command("ping")
    err = CommandError("ping", "(payload)", "empty")
    with pytest.raises(ValueError, match="ok=True needs a Command"):
        reply(err, ok=True, device_id="box-1")
    with pytest.raises(ValueError, match="CommandError"):
        reply(ok, ok=False, device_id="box-1")
    with pytest.raises(ValueError, match="no result"):
        reply(err, ok=False, device_id="box-1", result={})
    with pytest.raises(ValueError, match="device id"):
        reply(ok, ok=True, device_id="a/b")


# ------------------------------------------------------------------------ dispatcher


def test_dispatcher_runs_the_handler_and_replies_with_its_result() -> None:
    seen: list[Command] = []

    def start_case(command: Command) -> dict[str, Any]:
        seen.append(command)
        return {"case_id": "h-1234"}

    d = CommandDispatcher({"start_case": start_case}, device_id="box-1", max_bytes=MAX)
    out = d.handle("start_case", b'{"case_id": "S25-1", "request_id": "r1"}')
    assert seen == [Command("start_case", {"case_id": "S25-1"}, "r1")]
    assert (out["ok"], out["result"], out["request_id"]) == (True, {"case_id": "h-1234"}, "r1")


def test_ping_answers_by_itself() -> None:
    d = CommandDispatcher({}, device_id="box-1", max_bytes=MAX)
    out = d.handle("ping", b"{}")
    assert out["ok"] is True and out["result"]["software_version"] == cm.__version__


def test_a_command_without_a_handler_is_not_available() -> None:
    d = CommandDispatcher({}, device_id="box-1", max_bytes=MAX)
    out = d.handle("snapshot", b'{"request_id": "s"}')
    assert out["ok"] is False and out["request_id"] == "s"
    assert out["error"] == {"field": "(command)", "reason": "not available on this device"}


def test_a_handler_may_refuse_with_a_reason() -> None:
    def end_case(command: Command) -> None:
        raise CommandRefused("no case is open", field="case_id")

    d = CommandDispatcher({"end_case": end_case}, device_id="box-1", max_bytes=MAX)
    out = d.handle("end_case", b'{"case_id": "c1"}')
    assert out["ok"] is False
    assert out["error"] == {"field": "case_id", "reason": "no case is open"}


def failing(command: Command) -> dict[str, Any]:
    raise RuntimeError("disk on fire")


def not_a_mapping(command: Command) -> Any:
    return ["done"]


def not_json(command: Command) -> dict[str, Any]:
    return {"when": datetime.now()}


@pytest.mark.parametrize("handler", [failing, not_a_mapping, not_json])
def test_a_faulty_handler_becomes_internal_error_and_is_logged(
        handler: Any, reply_validator: jsonschema.Draft202012Validator,
        caplog: pytest.LogCaptureFixture) -> None:
    d = CommandDispatcher({"reload_config": handler}, device_id="box-1", max_bytes=MAX)
    with caplog.at_level(logging.ERROR, logger="appliance.outputs.commands"):
        out = d.handle("reload_config", b'{"request_id": "rc"}')
    assert out["ok"] is False and out["request_id"] == "rc"
    assert out["error"] == {"field": None, "reason": "internal error"}
    assert reply_validator.is_valid(json.loads(encode(out)))
    assert any("reload_config" in r.getMessage() and r.exc_info for r in caplog.records)
    assert "disk on fire" not in json.dumps(out)  # details go to the log, not the wire


def test_dispatcher_refuses_handlers_for_unknown_commands() -> None:
    with pytest.raises(ValueError, match="reboot"):
        CommandDispatcher({"reboot": failing}, device_id="box-1", max_bytes=MAX)
    with pytest.raises(ValueError, match="device id"):
        CommandDispatcher({}, device_id="box#1", max_bytes=MAX)


def test_handle_message_answers_on_the_reply_topic() -> None:
    topics = Topics("eyepiece/box-1/")
    d = CommandDispatcher({}, device_id="box-1", max_bytes=MAX)
    got = d.handle_message(topics, "eyepiece/box-1/cmd/ping", b'{"request_id": "p"}')
    assert got is not None
    topic, raw = got
    assert topic == "eyepiece/box-1/cmd/ping/reply"
    assert json.loads(raw)["request_id"] == "p"
    got = d.handle_message(topics, "eyepiece/box-1/cmd/nope", b"{}")
    assert got is not None and got[0] == "eyepiece/box-1/cmd/nope/reply"
    assert json.loads(got[1])["error"]["field"] == "(command)"
    for topic in ("eyepiece/box-1/cmd/", "eyepiece/box-1/cmd/ping/reply", "elsewhere/cmd/ping"):
        assert d.handle_message(topics, topic, b"{}") is None
