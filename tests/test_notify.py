"""sd_notify against a real AF_UNIX datagram socket, and the watchdog fed by progress."""

from __future__ import annotations

import os
import socket
import sys
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.service.notify import Notifier, socket_address, watchdog_interval_s
from appliance.service.watchdog import WatchdogFeeder, pipeline_alive

_TIMEOUT_S = 2.0


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(_TIMEOUT_S)
    yield sock, str(path)
    sock.close()


def _received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting now (after at least one)."""
    out = [sock.recv(4096)]
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(_TIMEOUT_S)
    return out


def _notifier(notify_socket: str, **extra: str) -> Notifier:
    return Notifier.from_environment({"NOTIFY_SOCKET": notify_socket, **extra})


def test_messages_arrive_byte_for_byte(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    n = _notifier(address)
    n.ready("scoring HER2 · 14.8 fps · broker ok")
    n.status("camera\nreconnecting")
    n.watchdog()
    n.stopping()
    n.close()
    assert _received(sock) == [
        "READY=1\nSTATUS=scoring HER2 · 14.8 fps · broker ok".encode(),
        b"STATUS=camera reconnecting",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]
    assert n.send_errors == 0


def test_reload_sends_reloading_with_monotonic_time_then_ready(
        listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    n = _notifier(address)
    before = time_us()
    n.reloading()
    n.ready()
    after = time_us()
    first, second = _received(sock)
    head, stamp = first.decode().split("\n")
    assert head == "RELOADING=1"
    key, value = stamp.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    assert second == b"READY=1"
    n.close()


def time_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_socket_name() -> None:
    name = f"eyepiece-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(_TIMEOUT_S)
    try:
        n = _notifier("@" + name)
        n.ready()
        assert sock.recv(4096) == b"READY=1"
        n.close()
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent_but_calls_are_recorded() -> None:
    n = Notifier.from_environment({})
    n.ready("up")
    n.watchdog()
    n.close()
    n.close()  # idempotent
    n.stopping()  # after close: recorded, not sent, no error
    assert n.sent == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1"]
    assert n.send_errors == 0 and n.watchdog_interval_s() is None


def test_missing_socket_is_logged_once_and_never_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = _notifier(str(tmp_path / "gone"))
    for _ in range(3):
        n.watchdog()
    assert n.send_errors == 3
    assert len([r for r in caplog.records if "could not be sent" in r.getMessage()]) == 1
    n.close()


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == "\0abc"
    with pytest.raises(ValueError, match="vsock"):
        socket_address("vsock:2:1234")


def test_watchdog_interval_from_environment() -> None:
    pid = os.getpid()
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(pid)},
                               pid) == 5.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(pid + 1)},
                               pid) is None
    assert watchdog_interval_s({}, pid) is None
    with pytest.raises(ValueError, match="WATCHDOG_USEC"):
        watchdog_interval_s({"WATCHDOG_USEC": "soon"}, pid)
    n = Notifier.from_environment({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(pid)})
    assert n.watchdog_interval_s() == 2.0


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Snap:
    def __init__(self, source_state: str) -> None:
        self.source_state = source_state


def test_pipeline_alive_decision() -> None:
    alive, _ = pipeline_alive(_Snap("streaming"), now=10.0, last_progress_t=0.0,
                              stall_after_s=10.0)
    assert alive
    alive, reason = pipeline_alive(_Snap("streaming"), now=10.5, last_progress_t=0.0,
                                   stall_after_s=10.0)
    assert not alive and "stalled" in reason and "streaming" in reason
    for state in ("fault", "ended"):
        alive, reason = pipeline_alive(_Snap(state), now=1000.0, last_progress_t=0.0,
                                       stall_after_s=10.0)
        assert alive and "no progress expected" in reason
    with pytest.raises(ValueError, match="stall_after_s"):
        pipeline_alive(_Snap("streaming"), now=0.0, last_progress_t=0.0, stall_after_s=0.0)


def _run(feeder: WatchdogFeeder, clock: _Clock, counts: list[int], state: str,
         step_s: float = 0.25) -> None:
    for count in counts:
        clock.t += step_s
        feeder.tick(count, state)


def test_feeder_stops_pinging_on_stall_and_resumes(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    n = _notifier(address, WATCHDOG_USEC="4000000", WATCHDOG_PID=str(os.getpid()))
    clock = _Clock()
    feeder = WatchdogFeeder(n, stall_after_s=3.0, clock=clock)
    # Steps of 0.25 s (exact in binary, so the times below are exact).
    _run(feeder, clock, list(range(1, 21)), "streaming")  # progress until t=105
    # One ping at once, then one per half interval (2 s): t=100.25, 102.25, 104.25.
    assert _received(sock) == [b"WATCHDOG=1"] * 3
    _run(feeder, clock, [20] * 50, "streaming")  # stalled; alive until t=108, ping at 106.25
    assert not feeder.alive
    stalled = _received(sock)
    assert stalled.count(b"WATCHDOG=1") == 1  # the one due before the stall limit
    assert stalled[-1].startswith(b"STATUS=stalled")
    pings = feeder.pings
    _run(feeder, clock, [20] * 10, "streaming")
    assert feeder.pings == pings  # still stalled: silence
    _run(feeder, clock, [21, 22, 23], "streaming")
    assert feeder.alive and feeder.pings == pings + 1
    assert _received(sock) == [b"WATCHDOG=1"]
    n.close()


@pytest.mark.parametrize("state", ["fault", "ended"])
def test_feeder_keeps_pinging_when_no_progress_is_expected(state: str) -> None:
    n = Notifier.from_environment({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    clock = _Clock()
    feeder = WatchdogFeeder(n, stall_after_s=3.0, clock=clock)
    _run(feeder, clock, [5] * 100, state)  # 25 s, counter still
    assert feeder.alive and feeder.pings == 25  # 25 s, every 1 s (half of 2 s)
    # The camera is back: the stall clock starts now, not at the last analysed frame.
    _run(feeder, clock, [5] * 12, "streaming")  # 3 s: just within the limit
    assert feeder.alive
    _run(feeder, clock, [5], "streaming")
    assert not feeder.alive


def test_feeder_without_watchdog_interval_never_pings() -> None:
    n = Notifier.from_environment({})
    clock = _Clock()
    feeder = WatchdogFeeder(n, stall_after_s=3.0, clock=clock)
    _run(feeder, clock, list(range(10)), "streaming")
    assert feeder.alive and feeder.pings == 0 and n.sent == []


def test_systemd_python_is_used_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    daemon = types.ModuleType("systemd.daemon")

    def notify(message: str) -> bool:
        calls.append(message)
        return message != "WATCHDOG=1"  # the binding reports failures as False

    daemon.notify = notify  # type: ignore[attr-defined]
    package = types.ModuleType("systemd")
    package.daemon = daemon  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.daemon", daemon)
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    n = Notifier.from_environment()
    n.ready("up")
    n.watchdog()
    assert calls == ["READY=1\nSTATUS=up", "WATCHDOG=1"]
    assert n.send_errors == 1
    n.close()
