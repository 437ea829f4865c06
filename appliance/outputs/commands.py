"""Commands from the dashboard: parse, validate, dispatch, reply. Never raises on bad input.

A command arrives on ``<prefix>cmd/<name>`` with a JSON object as its payload; the reply
(``eyepiece.reply/1``) goes to ``<prefix>cmd/<name>/reply``. The rules below are the same
as those of ``docs/mqtt/cmd-<name>.schema.json``: jsonschema is not a runtime dependency,
so this module checks them itself and a test proves both agree on a large generated
corpus. A malformed command gets an error reply naming the field and the reason, and
changes nothing.

Error messages never repeat a case id: a badly formed one may be a patient's name.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from appliance import __version__
from appliance.outputs.mqtt_contract import (
    REPLY_SCHEMA,
    Topics,
    check_device_id,
    encode,
    iso_utc,
)

_log = logging.getLogger(__name__)
_REFUSALS_LOGGED = 20
_REFUSAL_WINDOW_S = 60.0

COMMANDS = ("start_case", "end_case", "start_control", "end_control", "set_dilution",
            "set_assay", "set_objective", "snapshot", "reload_config", "ping")
ASSAYS = ("her2", "hep2")
OBJECTIVES = ("10x", "20x", "40x", "auto")
MAX_REQUEST_ID_CHARS = 64
MAX_CASE_ID_CHARS = 128
MAX_UM_PER_PX = 10.0

PAYLOAD = "(payload)"  # the field an error names when the payload as a whole is wrong
COMMAND = "(command)"  # ... when the command itself is unknown or not available

_REQUEST_ID_BAD = re.compile(r"[^A-Za-z0-9_.:-]")
_EXPECTED_BAD = re.compile(r"[^A-Za-z0-9_+ -]")
MAX_EXPECTED_CHARS = 40
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHOWN_CHARS = 40


@dataclass(frozen=True)
class _Rule:
    """What one payload field must be (mirrors its JSON Schema property)."""

    kind: str  # "string" | "number" | "integer" (a whole number, 160 or 160.0, as JSON)
    choices: tuple[str, ...] = ()
    min_length: int = 1
    max_length: int | None = None
    forbidden: re.Pattern[str] | None = None  # any match is refused
    forbidden_why: str = ""
    exclusive_minimum: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    echo: bool = True  # whether a bad value may be shown in the error


@dataclass(frozen=True)
class _Spec:
    """One command: its fields, which are required, and an exactly-one-of group."""

    fields: Mapping[str, _Rule]
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()


_REQUEST_ID = _Rule("string", max_length=MAX_REQUEST_ID_CHARS, forbidden=_REQUEST_ID_BAD,
                    forbidden_why="only letters, digits and _ . : - are allowed")
_CASE_ID = _Rule("string", max_length=MAX_CASE_ID_CHARS, forbidden=_CONTROL,
                 forbidden_why="control characters are not allowed", echo=False)
_ASSAY = _Rule("string", choices=ASSAYS)
_EXPECTED = _Rule("string", max_length=MAX_EXPECTED_CHARS, forbidden=_EXPECTED_BAD,
                  forbidden_why="only letters, digits, spaces and _ + - are allowed")

SPECS: Mapping[str, _Spec] = {
    # slide: a HEp-2 case's slide, as the lab knows it (the case checks the assay).
    "start_case": _Spec({"case_id": _CASE_ID, "assay": _ASSAY, "slide": _CASE_ID},
                        required=("case_id",)),
    "end_case": _Spec({"case_id": _CASE_ID}, required=("case_id",)),
    # A HER2 level, or for a HEp-2 case "negative" or a pattern: the case checks it.
    "start_control": _Spec({"expected": _EXPECTED}),
    "end_control": _Spec({}),
    # The serum dilution of the HEp-2 well shown next: 160 for 1:160 (the case checks it).
    "set_dilution": _Spec({"dilution": _Rule("integer", minimum=2, maximum=100_000)},
                          required=("dilution",)),
    "set_assay": _Spec({"assay": _ASSAY}, required=("assay",)),
    "set_objective": _Spec(
        {"objective": _Rule("string", choices=OBJECTIVES),
         "um_per_px": _Rule("number", exclusive_minimum=0.0, maximum=MAX_UM_PER_PX)},
        one_of=("objective", "um_per_px"),
    ),
    "snapshot": _Spec({}),
    "reload_config": _Spec({}),
    "ping": _Spec({}),
}


@dataclass(frozen=True)
class Command:
    """A valid command: its name, its fields (without request_id) and the request id."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(frozen=True)
class CommandError:
    """Why a command was refused: the field (or ``(payload)``, ``(command)``) and the reason."""

    command: str
    field: str | None
    reason: str
    request_id: str | None = None

    @property
    def message(self) -> str:
        """``field: reason`` for the log."""
        return f"{self.field}: {self.reason}" if self.field else self.reason


class CommandRefused(Exception):
    """Raised by a handler that will not carry out a valid command (e.g. no case is open).

    The reason goes to the reply as it is: it must not hold a case id or anything else
    that may identify a patient.
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _show(value: object) -> str:
    """A short, ASCII-safe rendering of an untrusted value for an error message."""
    text = ascii(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + "..."


def _safe_name(name: str) -> str:
    """The command name as it can appear in a reply (an unknown one may be anything)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "?", name)[:MAX_REQUEST_ID_CHARS]
    return cleaned or "?"


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _rule_problem(rule: _Rule, value: object) -> str | None:
    """Why ``value`` breaks ``rule``, or None. Mirrors the JSON Schema keywords one by one."""
    if rule.kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a{'n integer' if rule.kind == 'integer' else ' number'}, got " \
                   f"{_json_type(value)}"
        if not math.isfinite(value):
            return "expected a finite number"
        if rule.kind == "integer" and value != int(value):
            return f"{value} is not a whole number"
        if rule.minimum is not None and value < rule.minimum:
            return f"{value} is below the minimum {rule.minimum:g}"
        if rule.exclusive_minimum is not None and value <= rule.exclusive_minimum:
            return f"{value} is not above {rule.exclusive_minimum}"
        if rule.maximum is not None and value > rule.maximum:
            return f"{value} is above the maximum {rule.maximum}"
        return None
    if not isinstance(value, str):
        return f"expected a string, got {_json_type(value)}"
    shown = f"{_show(value)} " if rule.echo else ""
    if rule.choices:
        if value not in rule.choices:
            return f"{shown}is not one of {', '.join(rule.choices)}"
        return None
    if len(value) < rule.min_length:
        return "empty"
    if rule.max_length is not None and len(value) > rule.max_length:
        return f"longer than {rule.max_length} characters"
    if rule.forbidden is not None and rule.forbidden.search(value):
        return f"{shown}is refused: {rule.forbidden_why}"
    return None


def _field_label(key: str) -> str:
    """An unknown field's name as the error shows it: plain names as they are, others quoted."""
    return key if re.fullmatch(r"[A-Za-z0-9_]{1,40}", key) else _show(key)


def _spec_problem(spec: _Spec, obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (field, reason) by which ``obj`` breaks ``spec``, or None when valid."""
    for key in sorted(k for k in obj if k not in spec.fields and k != "request_id"):
        known = ", ".join([*spec.fields, "request_id"])
        return _field_label(key), f"unknown field (known: {known})"
    for key in spec.required:
        if key not in obj:
            return key, "missing (required)"
    if spec.one_of:
        present = [k for k in spec.one_of if k in obj]
        names = " or ".join(spec.one_of)
        if not present:
            return spec.one_of[0], f"missing: give {names}"
        if len(present) > 1:
            return present[-1], f"give {names}, not both"
    for key, rule in spec.fields.items():
        if key in obj:
            problem = _rule_problem(rule, obj[key])
            if problem:
                return key, problem
    return None


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {_show(key)}")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf, which no rule can compare
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(payload: bytes, max_bytes: int) -> tuple[Any, str | None]:
    """The parsed payload, or (None, reason) when it is too big, not UTF-8 or not JSON."""
    if len(payload) > max_bytes:
        return None, f"{len(payload)} bytes, more than the limit of {max_bytes}"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (bad byte at offset {exc.start})"
    if not text.strip():
        return None, "empty: send a JSON object, at least {}"
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite_float,
                          parse_constant=_refuse_constant), None
    except _DuplicateKey as exc:
        return None, str(exc)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except ValueError as exc:  # our hooks, or an integer too long to convert
        return None, f"not usable JSON ({exc})"
    except RecursionError:
        return None, "not usable JSON (nested too deeply)"


def parse_command(name: str, payload: bytes, *, max_bytes: int) -> Command | CommandError:
    """Parse and validate one command; a CommandError names the field and the reason.

    Never raises for any ``name`` or ``payload``: unknown command, oversized, non-UTF-8,
    non-JSON, non-object, unknown, missing or wrong-typed fields all come back as errors.
    """
    shown = _safe_name(name)
    spec = SPECS.get(name)
    if spec is None:
        return CommandError(shown, COMMAND, f"unknown command {_show(name)} (known: "
                            f"{', '.join(COMMANDS)})")
    obj, why = _decode(bytes(payload), max_bytes)
    if why is not None:
        return CommandError(name, PAYLOAD, why)
    if not isinstance(obj, dict):
        return CommandError(name, PAYLOAD, f"expected a JSON object, got {_json_type(obj)}")
    request_id = obj.get("request_id")
    if "request_id" in obj:
        problem = _rule_problem(_REQUEST_ID, request_id)
        if problem:
            return CommandError(name, "request_id", problem)
    found = _spec_problem(spec, obj)
    if found:
        return CommandError(name, found[0], found[1], request_id)
    args = {k: v for k, v in obj.items() if k != "request_id"}
    if isinstance(args.get("um_per_px"), int):
        args["um_per_px"] = float(args["um_per_px"])
    if isinstance(args.get("dilution"), float):  # 160.0 is the integer 160 in JSON
        args["dilution"] = int(args["dilution"])
    return Command(name, args, request_id)


def refuse(command: Command, reason: str, *, field: str | None = None) -> CommandError:
    """A CommandError for a valid command that cannot be carried out now."""
    return CommandError(command.name, field, reason, command.request_id)


def reply(outcome: Command | CommandError, *, ok: bool, device_id: str,
          result: Mapping[str, Any] | None = None,
          now: datetime | None = None) -> dict[str, Any]:
    """The ``eyepiece.reply/1`` payload for a command that was carried out or refused.

    ``ok=True`` goes with a Command (``result`` defaults to {}); ``ok=False`` with a
    CommandError (see :func:`refuse`), and no result. Anything else is a ValueError.
    """
    if ok != isinstance(outcome, Command):
        raise ValueError("reply: ok=True needs a Command, ok=False a CommandError (refuse())")
    if not ok and result is not None:
        raise ValueError("reply: a refused command has no result")
    error = None
    if isinstance(outcome, CommandError):
        error = {"field": outcome.field, "reason": outcome.reason}
    return {
        "schema": REPLY_SCHEMA,
        "device_id": check_device_id(device_id),
        "sent_at": iso_utc(now),
        "command": _safe_name(outcome.name if isinstance(outcome, Command) else outcome.command),
        "request_id": outcome.request_id,
        "ok": ok,
        "result": (dict(result) if result is not None else {}) if ok else None,
        "error": error,
    }


Handler = Callable[[Command], Mapping[str, Any] | None]


def _ping(command: Command) -> dict[str, Any]:
    return {"software_version": __version__}


class CommandDispatcher:
    """Routes valid commands to their handlers and turns every outcome into a reply.

    ``handlers`` maps command names to callables supplied by the service; ``ping`` answers
    by itself unless given. A handler returns its result (a JSON-ready mapping, or None),
    raises :class:`CommandRefused` to refuse with a reason, and anything else it raises
    becomes the error reply "internal error" (logged with its traceback).
    """

    def __init__(self, handlers: Mapping[str, Handler], *, device_id: str,
                 max_bytes: int) -> None:
        unknown = sorted(set(handlers) - set(COMMANDS))
        if unknown:
            raise ValueError(f"handlers for unknown commands: {', '.join(unknown)}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.device_id = check_device_id(device_id)
        self.max_bytes = max_bytes
        self._handlers: dict[str, Handler] = {"ping": _ping, **handlers}
        # A flood of bad commands must not flood the log (a full log pipe stalls the box):
        # at most _REFUSALS_LOGGED per _REFUSAL_WINDOW_S are logged, the rest counted.
        self.refused = 0
        self._window_start = -_REFUSAL_WINDOW_S
        self._logged_in_window = 0

    def handle(self, name: str, payload: bytes) -> dict[str, Any]:
        """The reply to one incoming command; never raises."""
        parsed = parse_command(name, payload, max_bytes=self.max_bytes)
        if isinstance(parsed, CommandError):
            self._log_refusal(parsed)
            return reply(parsed, ok=False, device_id=self.device_id)
        handler = self._handlers.get(parsed.name)
        if handler is None:
            return reply(refuse(parsed, "not available on this device", field=COMMAND),
                         ok=False, device_id=self.device_id)
        try:
            out = self._run(handler, parsed)
            encode(out)  # a result (or reason) that is not JSON fails here, not when sent
            return out
        except Exception:  # a faulty handler must not take the command channel down
            _log.exception("command %s: handler failed", parsed.name)
            return reply(refuse(parsed, "internal error"), ok=False, device_id=self.device_id)

    def _log_refusal(self, error: CommandError) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._window_start >= _REFUSAL_WINDOW_S:
            if self._logged_in_window > _REFUSALS_LOGGED:
                _log.warning("%d more malformed commands were refused without a log line",
                             self._logged_in_window - _REFUSALS_LOGGED)
            self._window_start, self._logged_in_window = now, 0
        self._logged_in_window += 1
        if self._logged_in_window <= _REFUSALS_LOGGED:
            _log.warning("command %s refused: %s", error.command, error.message)

    def handle_message(self, topics: Topics, topic: str,
                       payload: bytes) -> tuple[str, bytes] | None:
        """(reply topic, encoded reply) for a message on ``topics.cmd_filter``; never raises.

        None for a topic that is not a command (nothing to answer, and no reply topic to
        answer on); it is logged.
        """
        name = topics.command_of(topic)
        if name is None:
            _log.warning("ignored a message on %r: not a command topic", topic[:200])
            return None
        return topics.reply(name), encode(self.handle(name, payload))

    def _run(self, handler: Handler, command: Command) -> dict[str, Any]:
        """The handler's outcome as a reply; exceptions other than CommandRefused go up."""
        try:
            result = handler(command)
        except CommandRefused as exc:
            _log.info("command %s refused by its handler: %s", command.name, exc.reason)
            return reply(refuse(command, exc.reason, field=exc.field), ok=False,
                         device_id=self.device_id)
        if result is not None and not isinstance(result, Mapping):
            raise TypeError(f"handler returned {type(result).__name__}, not a mapping")
        return reply(command, ok=True, device_id=self.device_id, result=result)
