"""The case button: the press decoder (pure), its reader thread, and the libgpiod adapter."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from appliance.config import ButtonConfig
from appliance.outputs.leds.gpiod_backend import GpiodUnavailableError
from appliance.service.button import (
    ButtonAction,
    ButtonClosedError,
    CaseButton,
    PressDecoder,
    open_button,
)
from appliance.service.button_gpiod import CONSUMER, GpiodEdgeSource
from tests.fakes.gpiod import FakeChip
from tests.fakes.gpiod_button import Bias, ButtonRig, Clock, Direction, Edge, EdgeEvent

CASE, CONTROL = ButtonAction.CASE, ButtonAction.CONTROL
LONG_S, DEBOUNCE_S = 2.0, 0.03

# --- the decoder: a table of timed steps ----------------------------------------------
# ("press" | "release", t, actions expected from that edge) or ("tick", t, actions).

Step = tuple[str, float, tuple[ButtonAction, ...]]
TABLE: dict[str, list[Step]] = {
    "short press": [("press", 10.0, ()), ("tick", 10.3, ()), ("release", 10.5, (CASE,))],
    "two short presses": [("press", 0.0, ()), ("release", 0.2, (CASE,)),
                          ("press", 1.0, ()), ("release", 1.2, (CASE,))],
    "bounce on press and release": [
        ("press", 0.0, ()), ("release", 0.004, ()), ("press", 0.009, ()),
        ("release", 0.6, (CASE,)), ("press", 0.605, ()), ("release", 0.61, ()),
        ("tick", 5.0, ())],
    "debounce counts from the accepted edge": [
        ("press", 0.0, ()), ("release", 0.01, ()), ("press", 0.02, ()),
        ("release", 0.031, (CASE,))],
    "long press fires at the threshold while held": [
        ("press", 0.0, ()), ("tick", 1.99, ()), ("tick", 2.0, (CONTROL,)),
        ("tick", 3.0, ()), ("release", 4.0, ())],
    "press that never ends fires once": [
        ("press", 0.0, ()), ("tick", 2.5, (CONTROL,)), ("tick", 60.0, ()),
        ("tick", 3600.0, ())],
    "long press seen only at release is still a long press": [
        ("press", 0.0, ()), ("release", 2.5, (CONTROL,))],
    "release without press (held at start-up)": [
        ("release", 0.0, ()), ("tick", 5.0, ()), ("press", 6.0, ()),
        ("release", 6.3, (CASE,))],
    "tap shorter than the debounce window is not a held button": [
        ("press", 0.0, ()), ("release", 0.01, ()), ("tick", 0.029, ()),
        ("tick", 0.03, (CASE,)), ("tick", 10.0, ())],
    "repeated level is no edge": [
        ("press", 0.0, ()), ("press", 0.5, ()), ("release", 1.0, (CASE,)),
        ("release", 1.5, ())],
    "long then short": [
        ("press", 0.0, ()), ("tick", 2.0, (CONTROL,)), ("release", 2.1, ()),
        ("press", 3.0, ()), ("release", 3.1, (CASE,))],
}


@pytest.mark.parametrize("name", list(TABLE))
def test_decoder_table(name: str) -> None:
    decoder = PressDecoder(LONG_S, DEBOUNCE_S)
    for kind, t, expected in TABLE[name]:
        got = decoder.tick(t) if kind == "tick" else decoder.edge(kind == "press", t)
        assert tuple(got) == expected, f"{name}: {kind} at {t}"


def test_decoder_counts_bounces_and_reports_its_state() -> None:
    decoder = PressDecoder(LONG_S, DEBOUNCE_S)
    decoder.edge(True, 0.0)
    decoder.edge(False, 0.005)
    decoder.edge(True, 0.01)
    assert decoder.bounces == 2
    assert decoder.pressed


def test_decoder_without_debounce_accepts_every_edge() -> None:
    decoder = PressDecoder(LONG_S, 0.0)
    assert decoder.edge(True, 0.0) == []
    assert decoder.edge(False, 0.0001) == [CASE]
    assert decoder.bounces == 0


def test_next_deadline_is_the_long_press_then_nothing() -> None:
    decoder = PressDecoder(LONG_S, DEBOUNCE_S)
    assert decoder.next_deadline() is None
    decoder.edge(True, 5.0)
    assert decoder.next_deadline() == pytest.approx(5.0 + LONG_S)
    decoder.tick(7.0)
    assert decoder.next_deadline() is None


def test_next_deadline_includes_a_pending_bounce() -> None:
    decoder = PressDecoder(LONG_S, DEBOUNCE_S)
    decoder.edge(True, 1.0)
    decoder.edge(False, 1.01)  # ignored for now; the line stays released
    assert decoder.next_deadline() == pytest.approx(1.0 + DEBOUNCE_S)


@pytest.mark.parametrize(("long_s", "debounce_s"), [(0.0, 0.03), (-1.0, 0.03), (2.0, -0.01),
                                                    (float("nan"), 0.03)])
def test_decoder_rejects_bad_times(long_s: float, debounce_s: float) -> None:
    with pytest.raises(ValueError, match=r"long_press_s|debounce_s"):
        PressDecoder(long_s, debounce_s)


# --- the reader thread over a scripted source ------------------------------------------


class ScriptedSource:
    """An EdgeSource fed by the test: edges queued, wait() blocks until some come."""

    def __init__(self) -> None:
        self.edges: queue.Queue[tuple[bool, float] | Exception] = queue.Queue()
        self.closed = 0
        self.timeouts: list[float] = []

    def wait(self, timeout_s: float) -> list[tuple[bool, float]]:
        self.timeouts.append(timeout_s)
        try:
            item = self.edges.get(timeout=timeout_s)
        except queue.Empty:
            return []
        if isinstance(item, Exception):
            raise item
        return [item]

    def close(self) -> None:
        self.closed += 1


class Recorder:
    """on_action that records, and can be told to fail."""

    def __init__(self, fail: set[ButtonAction] | None = None) -> None:
        self.actions: list[ButtonAction] = []
        self.fail = fail or set()
        self.event = threading.Event()

    def __call__(self, action: ButtonAction) -> None:
        self.actions.append(action)
        self.event.set()
        if action in self.fail:
            raise RuntimeError(f"service refused {action.value}")

    def wait_for(self, count: int, timeout_s: float = 3.0) -> list[ButtonAction]:
        deadline = time.monotonic() + timeout_s
        while len(self.actions) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.actions


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedSource, Recorder, CaseButton]]:
    source, recorder = ScriptedSource(), Recorder(fail={CONTROL})
    button = CaseButton(source, PressDecoder(0.3, 0.01), recorder, poll_s=0.05)
    yield source, recorder, button
    button.close()


def test_thread_delivers_short_and_long_presses(
        scripted: tuple[ScriptedSource, Recorder, CaseButton]) -> None:
    source, recorder, button = scripted
    button.start()
    now = time.monotonic()
    source.edges.put((True, now))
    source.edges.put((False, now + 0.1))
    assert recorder.wait_for(1) == [CASE]
    source.edges.put((True, time.monotonic()))  # held: CONTROL fires with no further edge
    assert recorder.wait_for(2) == [CASE, CONTROL]
    # The wait before the long press was cut short to fire it on time.
    assert min(source.timeouts) < 0.05


def test_callback_error_is_logged_and_the_thread_lives_on(
        scripted: tuple[ScriptedSource, Recorder, CaseButton],
        caplog: pytest.LogCaptureFixture) -> None:
    source, recorder, button = scripted
    button.start()
    with caplog.at_level(logging.ERROR, logger="appliance.service.button"):
        source.edges.put((True, time.monotonic()))
        assert recorder.wait_for(1) == [CONTROL]  # raises inside the callback
        source.edges.put((False, time.monotonic()))
        now = time.monotonic()
        source.edges.put((True, now))
        source.edges.put((False, now + 0.05))
        assert recorder.wait_for(2) == [CONTROL, CASE]
    assert button.running and button.callback_errors == 1
    failed = [r for r in caplog.records if "control action failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None  # with the traceback


def test_read_error_is_logged_once_and_retried(
        scripted: tuple[ScriptedSource, Recorder, CaseButton],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.service.button._RETRY_S", 0.01)
    source, recorder, button = scripted
    with caplog.at_level(logging.ERROR, logger="appliance.service.button"):
        button.start()
        source.edges.put(OSError(5, "Input/output error"))
        source.edges.put(OSError(5, "Input/output error"))
        now = time.monotonic()
        source.edges.put((True, now))
        source.edges.put((False, now + 0.05))
        assert recorder.wait_for(1) == [CASE]
    assert button.read_errors == 2
    assert len([r for r in caplog.records if "reading the GPIO line failed" in r.message]) == 1


def test_close_is_idempotent_joins_and_closes_the_source_once(
        scripted: tuple[ScriptedSource, Recorder, CaseButton]) -> None:
    source, _, button = scripted
    button.start()
    assert button.running
    started = time.monotonic()
    button.close()
    button.close()
    assert time.monotonic() - started < 1.0
    assert not button.running and source.closed == 1
    with pytest.raises(ButtonClosedError):
        button.start()


def test_context_manager_starts_and_closes() -> None:
    source = ScriptedSource()
    with CaseButton(source, PressDecoder(1.0, 0.0), Recorder()) as button:
        assert button.running
    assert source.closed == 1 and not button.running


def test_close_without_start_closes_the_source() -> None:
    source = ScriptedSource()
    button = CaseButton(source, PressDecoder(1.0, 0.0), Recorder())
    button.close()
    assert source.closed == 1 and not button.running


# --- the libgpiod adapter against the fake bindings ------------------------------------


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> ButtonRig:
    rig = ButtonRig({"/dev/gpiochip0": FakeChip(names={"BUTTON": 17})})
    gpiod, line = rig.modules()
    monkeypatch.setitem(sys.modules, "gpiod", gpiod)
    monkeypatch.setitem(sys.modules, "gpiod.line", line)
    return rig


@pytest.mark.parametrize(("line", "offset"), [("17", 17), ("BUTTON", 17), ("4", 4)])
def test_adapter_requests_an_input_with_both_edges(rig: ButtonRig, line: str,
                                                   offset: int) -> None:
    source = GpiodEdgeSource("/dev/gpiochip0", line, active_low=True, bias="pull_up",
                             debounce_s=0.03)
    req = rig.requests[-1]
    settings = req.settings[offset]
    assert req.consumer == CONSUMER
    assert settings.direction is Direction.INPUT and settings.edge_detection is Edge.BOTH
    assert settings.bias is Bias.PULL_UP and settings.active_low is True
    assert settings.debounce_period == timedelta(milliseconds=30)
    assert settings.event_clock is Clock.MONOTONIC
    source.close()
    source.close()
    assert req.released and req.release_calls == 1


@pytest.mark.parametrize(("active_low", "pressed_level"), [(True, 0), (False, 1)])
def test_adapter_maps_logical_edges_to_presses(rig: ButtonRig, active_low: bool,
                                               pressed_level: int) -> None:
    source = GpiodEdgeSource("/dev/gpiochip0", "17", active_low=active_low,
                             bias="pull_up" if active_low else "pull_down")
    assert rig.requests[-1].settings[17].active_low is active_low
    rig.drive(17, pressed_level, timestamp_ns=1_500_000_000)
    rig.drive(17, 1 - pressed_level, timestamp_ns=1_750_000_000)
    assert source.wait(0.5) == [(True, 1.5), (False, 1.75)]
    assert source.wait(0.01) == []
    source.close()


def test_adapter_events_follow_the_real_event_shape(rig: ButtonRig) -> None:
    GpiodEdgeSource("/dev/gpiochip0", "BUTTON")
    rig.drive("BUTTON", 0, timestamp_ns=5)
    (event,) = rig.requests[-1].read_edge_events()
    assert event.event_type is EdgeEvent.Type.RISING_EDGE  # active-low: a press rises
    assert (event.line_offset, event.global_seqno, event.line_seqno) == (17, 1, 1)


@pytest.mark.parametrize("bias", ["pull_up", "pull_down", "disabled", "as_is"])
def test_adapter_passes_each_bias(rig: ButtonRig, bias: str) -> None:
    GpiodEdgeSource("/dev/gpiochip0", "3", bias=bias)
    assert rig.requests[-1].settings[3].bias is Bias[bias.upper()]


def test_adapter_bad_line_or_chip_names_them(rig: ButtonRig) -> None:
    with pytest.raises(OSError, match=r"NOPE.*/dev/gpiochip0.*case button"):
        GpiodEdgeSource("/dev/gpiochip0", "NOPE")
    with pytest.raises(OSError, match=r"/dev/gpiochip9"):
        GpiodEdgeSource("/dev/gpiochip9", "3")
    with pytest.raises(ValueError, match=r"button\.bias"):
        GpiodEdgeSource("/dev/gpiochip0", "3", bias="sideways")


def test_adapter_missing_gpiod_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # import fails as when not installed
    with pytest.raises(GpiodUnavailableError, match=r"button\.backend.*python3-libgpiod"):
        GpiodEdgeSource("/dev/gpiochip0", "17")


def test_fake_refuses_what_the_real_bindings_refuse(rig: ButtonRig) -> None:
    gpiod, line = rig.modules()
    with pytest.raises(AttributeError):  # a float debounce: the bindings call total_seconds()
        gpiod.request_lines("/dev/gpiochip0", config={
            1: gpiod.LineSettings(direction=line.Direction.INPUT, debounce_period=0.03)})
    with pytest.raises(TypeError):
        gpiod.request_lines("/dev/gpiochip0", config={
            1: gpiod.LineSettings(edge_detection="both")})
    req = gpiod.request_lines("/dev/gpiochip0", config={
        1: gpiod.LineSettings(direction=line.Direction.INPUT, edge_detection=line.Edge.RISING)})
    rig.drive(1, 0)  # pull-up idle high, active-high: falling, not asked for
    assert not req.wait_edge_events(0)
    req.release()
    with pytest.raises(gpiod.RequestReleasedError):
        req.wait_edge_events(0)


# --- open_button ---------------------------------------------------------------------


def test_open_button_none_is_none() -> None:
    assert open_button(ButtonConfig(), Recorder()) is None


def test_open_button_gpiod_needs_a_line() -> None:
    with pytest.raises(ValueError, match=r"button\.line"):
        open_button(ButtonConfig(backend="gpiod", line=""), Recorder())


def test_open_button_gpiod_end_to_end(rig: ButtonRig) -> None:
    recorder = Recorder()
    cfg = ButtonConfig(backend="gpiod", line="BUTTON", debounce_ms=10, long_press_s=0.3)
    button = open_button(cfg, recorder)
    assert button is not None and button.running
    try:
        now = time.monotonic_ns()
        rig.drive("BUTTON", 0, timestamp_ns=now)  # pressed (to ground)
        rig.drive("BUTTON", 1, timestamp_ns=now + 100_000_000)
        assert recorder.wait_for(1) == [CASE]
        rig.drive("BUTTON", 0)  # held past long_press_s
        assert recorder.wait_for(2) == [CASE, CONTROL]
    finally:
        button.close()
    assert rig.requests[-1].released
