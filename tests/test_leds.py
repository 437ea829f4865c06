"""Status LEDs: the state machine, the sysfs backend on a tree laid out like sysfs, and the
gpiod backend against a fake of the libgpiod v2 bindings."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from appliance.config import config_from_dict
from appliance.outputs.leds import (
    OFF,
    PATTERNS,
    LedsClosedError,
    LedState,
    NoLeds,
    Pattern,
    led_state,
    open_leds,
)
from appliance.outputs.leds import sysfs as sysfs_module
from appliance.outputs.leds.gpiod_backend import GpiodLeds, GpiodUnavailableError, line_id
from appliance.outputs.leds.sysfs import SysfsLeds
from appliance.service.health import Health, HealthReadings, assess
from tests.fakes.gpiod import FakeChip, GpioRig, Value

NAMES = ("eyepiece:red", "eyepiece:green", "eyepiece:blue")
OK = assess(HealthReadings(source_state="streaming"))
BROKER_DOWN = assess(HealthReadings(source_state="streaming", broker_configured=True))
CAMERA_LOST = assess(HealthReadings(source_state="fault", source_reason="unplugged",
                                    broker_configured=True))
HOT = assess(HealthReadings(source_state="streaming", temperatures_c={"soc": 88.0}))


# --- state machine ---------------------------------------------------------------------

@pytest.mark.parametrize(("health", "started", "scoring", "attention", "expected"), [
    (OK, False, False, False, LedState.BOOTING),
    (OK, True, False, False, LedState.READY),
    (OK, True, True, False, LedState.SCORING),
    (OK, True, True, True, LedState.ATTENTION),
    (BROKER_DOWN, True, True, True, LedState.BROKER_OFFLINE),
    (CAMERA_LOST, True, True, True, LedState.FAULT),
    (CAMERA_LOST, False, False, False, LedState.FAULT),  # a fault at boot shows as fault
    (BROKER_DOWN, False, False, False, LedState.BOOTING),  # not connected yet is not offline
    (HOT, True, False, False, LedState.READY),  # degraded without a light of its own
])
def test_the_most_urgent_state_wins(health: Health, started: bool, scoring: bool,
                                    attention: bool, expected: LedState) -> None:
    assert led_state(health, started=started, scoring=scoring,
                     attention=attention) is expected


def test_every_state_has_its_own_rhythm_and_colour() -> None:
    assert set(PATTERNS) == set(LedState)
    rhythms = {(p.on_ms, p.off_ms) if not p.solid else "solid" for p in PATTERNS.values()}
    assert len(rhythms) == len(LedState)  # readable without seeing colour
    assert len({p.colour for p in PATTERNS.values()}) == len(LedState)
    assert all(any(p.colour) for p in PATTERNS.values())
    assert [s for s, p in PATTERNS.items() if p.solid] == [LedState.READY]


@pytest.mark.parametrize(("colour", "on", "off"), [((256, 0, 0), 0, 0), ((0, 0), 0, 0),
                                                  ((1, 1, 1), -1, 0), ((1, 1, 1), 0, 100)])
def test_a_bad_pattern_is_refused(colour: tuple[int, int, int], on: int, off: int) -> None:
    with pytest.raises(ValueError, match=r"colour|negative|on_ms"):
        Pattern(colour, on, off)


# --- sysfs ---------------------------------------------------------------------------

def make_led(root: Path, name: str, max_brightness: int = 255) -> Path:
    led = root / name
    led.mkdir(parents=True)
    files = {"brightness": "0", "max_brightness": str(max_brightness),
             "trigger": "[none] kbd-scrolllock timer heartbeat default-on",
             "delay_on": "500", "delay_off": "500"}
    for fname, text in files.items():
        (led / fname).write_text(text + "\n")
    return led


def read(led: Path) -> dict[str, str]:
    return {f: (led / f).read_text().strip()
            for f in ("brightness", "trigger", "delay_on", "delay_off")}


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    make_led(tmp_path, NAMES[0], 255)
    make_led(tmp_path, NAMES[1], 1)  # a plain GPIO LED: on/off only
    make_led(tmp_path, NAMES[2], 100)
    return tmp_path


@pytest.mark.parametrize("state", list(LedState))
def test_sysfs_files_for_each_state(tree: Path, state: LedState) -> None:
    leds = SysfsLeds(tree, NAMES)
    leds.show(state)
    pattern = PATTERNS[state]
    for name, level, top in zip(NAMES, pattern.colour, (255, 1, 100), strict=True):
        got = read(tree / name)
        expect = 0 if level == 0 else max(1, round(level * top / 255))
        assert got["brightness"] == str(expect), name
        if expect and not pattern.solid:
            assert got["trigger"] == "timer"
            assert (got["delay_on"], got["delay_off"]) == (str(pattern.on_ms),
                                                           str(pattern.off_ms))
        else:
            assert got["trigger"] == "none"
    assert leds.errors == 0


def test_sysfs_blink_then_solid_leaves_the_timer(tree: Path) -> None:
    leds = SysfsLeds(tree, NAMES)
    leds.show(LedState.FAULT)
    assert read(tree / NAMES[0])["trigger"] == "timer"
    leds.show(LedState.READY)
    red = read(tree / NAMES[0])
    assert (red["brightness"], red["trigger"]) == ("0", "none")
    assert read(tree / NAMES[1])["brightness"] == "1"


def test_sysfs_writes_nothing_when_the_state_is_unchanged(tree: Path) -> None:
    leds = SysfsLeds(tree, NAMES)
    leds.show(LedState.SCORING)
    marker = "touched by someone else"
    for name in NAMES:
        (tree / name / "brightness").write_text(marker)
    leds.show(LedState.SCORING)
    assert all((tree / n / "brightness").read_text() == marker for n in NAMES)
    leds.show(LedState.READY)  # a change writes again
    assert (tree / NAMES[1] / "brightness").read_text() == "1"


def test_sysfs_missing_led_is_logged_once_and_counted(tree: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    names = (NAMES[0], "eyepiece:nothere", NAMES[2])
    leds = SysfsLeds(tree, names)
    with caplog.at_level(logging.ERROR):
        leds.show(LedState.BOOTING)  # white: all three lit
        leds.show(LedState.READY)
        leds.show(LedState.SCORING)
    lines = [r.getMessage() for r in caplog.records if "nothere" in r.getMessage()]
    assert len(lines) == 1
    assert "does not exist" in lines[0]
    assert leds.errors == 3
    assert read(tree / NAMES[2])["brightness"] == "100"  # the others still work


def test_sysfs_permission_error_never_raises(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    # The tests may run as root, where a read-only file is still writable: the kernel's
    # refusal is simulated at the one place that writes.
    real_write = sysfs_module._write

    def refuse_red(path: Path, value: str) -> None:
        if path.parent.name == NAMES[0]:
            raise PermissionError(13, "Permission denied", str(path))
        real_write(path, value)

    monkeypatch.setattr(sysfs_module, "_write", refuse_red)
    leds = SysfsLeds(tree, NAMES)
    with caplog.at_level(logging.ERROR):
        leds.show(LedState.FAULT)
        leds.show(LedState.BOOTING)
    assert leds.errors == 2
    assert caplog.text.count("permission denied") == 1
    assert read(tree / NAMES[1])["trigger"] == "timer"  # green still blinks white


def test_sysfs_without_timer_trigger_says_why(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    for name in NAMES:
        (make_led(tmp_path, name) / "trigger").write_text("[none] heartbeat\n")
    leds = SysfsLeds(tmp_path, NAMES)
    with caplog.at_level(logging.ERROR):
        leds.show(LedState.FAULT)
    assert leds.errors == 3
    assert "CONFIG_LEDS_TRIGGER_TIMER" in caplog.text


def test_sysfs_close_turns_off_once(tree: Path) -> None:
    leds = SysfsLeds(tree, NAMES)
    leds.show(LedState.BOOTING)
    leds.close()
    assert all(read(tree / n)["brightness"] == "0" for n in NAMES)
    assert all(read(tree / n)["trigger"] == "none" for n in NAMES)
    leds.close()
    with pytest.raises(LedsClosedError):
        leds.show(LedState.READY)


# --- gpiod ---------------------------------------------------------------------------

@pytest.fixture()
def rig(monkeypatch: pytest.MonkeyPatch) -> GpioRig:
    rig = GpioRig({"/dev/gpiochip0": FakeChip(num_lines=32, names={"LED_R": 17})})
    gpiod, line = rig.modules()
    monkeypatch.setitem(sys.modules, "gpiod", gpiod)
    monkeypatch.setitem(sys.modules, "gpiod.line", line)
    return rig


def test_gpiod_requests_three_outputs_starting_dark(rig: GpioRig) -> None:
    leds = GpiodLeds("/dev/gpiochip0", ("LED_R", 5, 6), active_low=True)
    (req,) = rig.requests
    assert req.consumer == "eyepiece"
    assert set(req.settings) == {17, 5, 6}
    assert all(s.active_low for s in req.settings.values())
    assert req.values == {17: Value.INACTIVE, 5: Value.INACTIVE, 6: Value.INACTIVE}
    assert req.physical(5) == 1  # active low: dark is a high line
    leds.close()


def test_gpiod_solid_sets_values_without_a_thread(rig: GpioRig) -> None:
    leds = GpiodLeds("/dev/gpiochip0", (4, 5, 6))
    leds.show(LedState.READY)
    req = rig.requests[0]
    assert req.values == {4: Value.INACTIVE, 5: Value.ACTIVE, 6: Value.INACTIVE}
    assert not leds.blinking
    changes = len(req.history)
    leds.show(LedState.READY)
    assert len(req.history) == changes  # unchanged state: nothing set
    leds.close()


def test_gpiod_blink_thread_toggles_then_stops_on_close(rig: GpioRig) -> None:
    fast = {s: Pattern((255, 0, 0), 10, 10) for s in LedState}
    leds = GpiodLeds("/dev/gpiochip0", (4, 5, 6), patterns=fast)
    leds.show(LedState.FAULT)
    req = rig.requests[0]
    deadline = time.monotonic() + 5
    while len(req.history) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    red = [v[4] for _, v in req.history[1:6]]
    assert red == [Value.ACTIVE, Value.INACTIVE, Value.ACTIVE, Value.INACTIVE, Value.ACTIVE]
    assert leds.blinking
    leds.close()
    assert not leds.blinking
    settled = len(req.history)
    time.sleep(0.05)
    assert len(req.history) == settled  # no writes after close
    assert req.values == {4: Value.INACTIVE, 5: Value.INACTIVE, 6: Value.INACTIVE}
    assert req.release_calls == 1
    leds.close()
    assert req.release_calls == 1
    with pytest.raises(LedsClosedError):
        leds.show(LedState.READY)


def test_gpiod_change_of_state_replaces_the_blink_thread(rig: GpioRig) -> None:
    leds = GpiodLeds("/dev/gpiochip0", (4, 5, 6))
    leds.show(LedState.BOOTING)
    assert leds.blinking
    leds.show(LedState.READY)
    assert not leds.blinking
    assert rig.requests[0].values[5] is Value.ACTIVE
    leds.close()


def test_gpiod_bad_lines_name_the_chip(rig: GpioRig) -> None:
    with pytest.raises(OSError, match="gpiochip9"):
        GpiodLeds("/dev/gpiochip9", (4, 5, 6))
    with pytest.raises(OSError, match="exactly once"):
        GpiodLeds("/dev/gpiochip0", (4, 4, 6))
    with pytest.raises(OSError, match="unknown line name"):
        GpiodLeds("/dev/gpiochip0", ("eyepiece:red", 5, 6))


def test_gpiod_missing_module_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # import fails as when not installed
    with pytest.raises(GpiodUnavailableError, match=r"python3-libgpiod.*pip install gpiod"):
        GpiodLeds("/dev/gpiochip0", (4, 5, 6))


def test_line_ids_from_config() -> None:
    assert (line_id("17"), line_id("LED_R")) == (17, "LED_R")


# --- open_leds ---------------------------------------------------------------------------

def test_open_leds_picks_the_backend(tree: Path, rig: GpioRig) -> None:
    none = open_leds(config_from_dict({}).leds)
    assert isinstance(none, NoLeds)
    none.show(LedState.FAULT)
    none.close()
    sysfs = open_leds(config_from_dict({"leds": {"backend": "sysfs",
                                                 "sysfs_root": str(tree)}}).leds)
    sysfs.show(LedState.READY)
    assert read(tree / NAMES[1])["brightness"] == "1"
    gpio = open_leds(config_from_dict({"leds": {"backend": "gpiod", "red": "LED_R",
                                                "green": "5", "blue": "6"}}).leds)
    gpio.show(LedState.READY)
    assert rig.requests[0].values == {17: Value.INACTIVE, 5: Value.ACTIVE, 6: Value.INACTIVE}
    gpio.close()
    assert OFF.solid


def test_fake_gpiod_refuses_what_the_real_bindings_refuse(rig: GpioRig) -> None:
    gpiod, line = rig.modules()
    req = gpiod.request_lines("/dev/gpiochip0", consumer="t", config={
        (1, 2): gpiod.LineSettings(direction=line.Direction.OUTPUT)})
    with pytest.raises(AttributeError):
        req.set_value(1, 1)  # ints are not line.Value
    with pytest.raises(TypeError):
        gpiod.request_lines("/dev/gpiochip0", config={3: gpiod.LineSettings(direction=True)})
    with pytest.raises(OSError, match="busy"):
        gpiod.request_lines("/dev/gpiochip0", config={2: None})
    req.release()
    with pytest.raises(gpiod.RequestReleasedError):
        req.set_value(1, line.Value.ACTIVE)
    with pytest.raises(gpiod.RequestReleasedError):
        req.release()
