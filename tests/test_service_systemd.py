"""`appliance run` under a systemd-like parent: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The service is a real process; ``NOTIFY_SOCKET`` is a real datagram socket bound here,
exactly what systemd hands a ``Type=notify`` unit. The stalled-pipeline case is in
tests/test_notify.py (the feeder with an injected clock) and below with the lifecycle.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.assays.her2.assay import Her2Assay
from appliance.config import Config
from appliance.outputs.leds import NoLeds
from appliance.outputs.leds.patterns import LedState
from appliance.pipeline.metrics import PipelineMetrics
from appliance.service.lifecycle import Lifecycle
from appliance.service.notify import Notifier
from tests.imagefiles import write_rgb
from tools.synth.her2_fields import FieldSpec, generate_field

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 90.0


class NotifySocket:
    """The parent's end of NOTIFY_SOCKET: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def collect_until(self, test: object, timeout_s: float = WAIT_S) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not test(self.messages):  # type: ignore[operator]
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return self.messages

    def drain(self) -> list[str]:
        """Every datagram waiting now, without waiting for more (a full queue blocks the
        sender: the kernel keeps only net.unix.max_dgram_qlen of them)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return self.messages
        finally:
            self.sock.settimeout(0.2)

    def close(self) -> None:
        self.sock.close()


def has(line: str) -> object:
    return lambda ms: any(line in m.split("\n") for m in ms)


@pytest.fixture
def notify(tmp_path: Path) -> NotifySocket:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_the_service_speaks_sd_notify(tmp_path: Path, notify: NotifySocket) -> None:
    folder = tmp_path / "fields"
    folder.mkdir()
    write_rgb(folder / "f.png", generate_field(FieldSpec(seed=990_800, width=480,
                                                          height=360)).image)
    cfg = tmp_path / "eyepiece.toml"
    cfg.write_text(f'[source]\nuri = "replay:{folder}"\nfps = 20.0\nhold_s = 60.0\n'
                   f'[display]\nsink = "none"\n[store]\npath = "{tmp_path / "r.sqlite"}"\n',
                   encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(notify.path),
           "WATCHDOG_USEC": "1000000"}
    log = (tmp_path / "service.log").open("w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--config", str(cfg)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        notify.collect_until(has("READY=1"))
        notify.collect_until(lambda ms: sum("WATCHDOG=1" in m for m in ms) >= 3)
        proc.send_signal(signal.SIGHUP)  # systemctl reload
        notify.collect_until(has("RELOADING=1"))
        notify.collect_until(lambda ms: sum("READY=1" in m.split("\n") for m in ms) >= 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
        messages = notify.collect_until(has("STOPPING=1"), timeout_s=2)
    finally:
        proc.kill()
    lines = [line for m in messages for line in m.split("\n")]
    assert any(line.startswith("STATUS=scoring HER2") for line in lines), lines
    order = [next(i for i, line in enumerate(lines) if line == key)
             for key in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert order == sorted(order)
    assert "Traceback" not in (tmp_path / "service.log").read_text(encoding="utf-8")


class _Leds:
    def __init__(self) -> None:
        self.states: list[LedState] = []

    def show(self, state: LedState) -> None:
        self.states.append(state)

    def close(self) -> None:
        pass


def test_a_stalled_pipeline_stops_the_watchdog_and_the_light_says_so(
        notify: NotifySocket) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(notify.path),
                                          "WATCHDOG_USEC": "1000000"})
    leds = _Leds()
    assay = Her2Assay.from_config(Config())
    life = Lifecycle(assay=assay, notifier=notifier, leds=leds, stall_after_s=2.0,
                     config_path=None)
    metrics = PipelineMetrics(16, started_at=0.0)
    metrics.set_source("streaming", 0)
    t = 0.0
    for _ in range(10):  # progressing: one result every 0.2 s
        metrics.frame_captured(t)
        metrics.result_done(t, t + 0.1)
        t += 0.2
        life.tick(metrics.snapshot(t), t)
    pings_while_healthy = notifier.sent.count("WATCHDOG=1")
    sent_before_stall_limit = 0
    for i in range(30):  # stalled: frames arrive, nothing is analysed for 6 s
        metrics.frame_captured(t)
        t += 0.2
        life.tick(metrics.snapshot(t), t)
        if i == 12:  # 2.6 s without progress: past the 2 s limit
            sent_before_stall_limit = len(notifier.sent)
    assert pings_while_healthy >= 3
    late = notifier.sent[sent_before_stall_limit:]
    assert "WATCHDOG=1" not in late  # no pings once stalled: systemd restarts us
    assert LedState.BOOTING in leds.states and leds.states[-1] is not LedState.BOOTING
    notifier.close()


def test_a_view_held_long_after_its_report_is_not_a_stall(notify: NotifySocket) -> None:
    """A still view once reported is not analysed again: its frames are passed over as
    ``settled``. A pathologist reading one field for a minute is not a stalled pipeline;
    before, the watchdog counted analysed frames only, stopped its pings after 30 s of
    such a hold and systemd restarted the box."""
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(notify.path),
                                          "WATCHDOG_USEC": "1000000"})
    assay = Her2Assay.from_config(Config())
    life = Lifecycle(assay=assay, notifier=notifier, leds=_Leds(), stall_after_s=2.0,
                     config_path=None)
    metrics = PipelineMetrics(16, started_at=0.0)
    metrics.set_source("streaming", 0)
    metrics.frame_captured(0.0)
    metrics.result_done(0.0, 0.1)
    metrics.field_reported(1000.0)
    t = 0.2
    life.tick(metrics.snapshot(t), t)
    first_held_tick = len(notifier.sent)
    for _ in range(30):  # 6 s of the same view: every frame passed over as decided
        metrics.frame_captured(t)
        metrics.frame_dropped("settled")
        t += 0.2
        life.tick(metrics.snapshot(t), t)
        notify.drain()
    assert metrics.snapshot(t).frames_analysed == 1
    assert notifier.sent[first_held_tick:].count("WATCHDOG=1") >= 4  # pinged throughout
    assert notify.messages.count("WATCHDOG=1") >= 5  # and systemd's socket received them
    assert not [m for m in notify.messages if "stalled" in m]
    assert life.feeder.alive
    notifier.close()


def test_no_leds_is_a_real_sink() -> None:
    sink = NoLeds()
    sink.show(LedState.FAULT)
    sink.close()
    sink.close()


def test_an_open_case_without_a_valid_control_asks_for_attention(
        notify: NotifySocket) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(notify.path)})
    leds = _Leds()
    needs_control = [True]
    with Her2Assay.from_config(Config()) as assay:
        life = Lifecycle(assay=assay, notifier=notifier, leds=leds, stall_after_s=30.0,
                         config_path=None, case_attention=lambda: needs_control[0])
        metrics = PipelineMetrics(16, started_at=0.0)
        metrics.set_source("streaming", 0)
        life.tick(metrics.snapshot(0.1), 0.1)
        assert leds.states[-1] is LedState.ATTENTION
        needs_control[0] = False  # the control was checked and is valid
        life.tick(metrics.snapshot(0.2), 0.2)
        assert leds.states[-1] is LedState.READY
    notifier.close()
