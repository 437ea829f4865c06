"""`appliance run` against a real Mosquitto: birth and will, outage, crash, commands.

The service runs as a real process (`python -m appliance run`); the broker is a real
mosquitto on a free port (tests/broker.py). Nothing here is timed: waits are generous
guards against a hang.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Mosquitto
from tests.imagefiles import write_rgb
from tools.synth.her2_fields import FieldSpec, generate_field

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 90.0
DEVICE = "box-test"


class Subscriber:
    """A dashboard stand-in: persistent session, reconnects by itself, keeps every message."""

    def __init__(self, port: int, topic: str, *, client_id: str = "dashboard-test") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        # Whatever a test does next, this subscriber must already be listening.
        if not self.subscribed.wait(WAIT_S):
            raise AssertionError(f"subscriber could not subscribe to {topic} on port {port}")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, what: str, test: Any, timeout_s: float = WAIT_S) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: test(self.messages), timeout_s):
                raise AssertionError(f"no {what} within {timeout_s} s; got "
                                     f"{[m.topic for m in self.messages]}")
            return list(self.messages)

    def payloads(self, suffix: str) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(m.payload) for m in self.messages if m.topic.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fields_on(messages: list[Any]) -> int:
    return len({json.loads(m.payload)["msg_id"] for m in messages if m.topic.endswith("/field")})


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mqtt-fields")
    for i in range(10):
        write_rgb(folder / f"f{i:02d}.png", generate_field(FieldSpec(
            seed=990_500 + i, width=480, height=360, target_score=("0", "1+", "2+", "3+")[i % 4],
        )).image)
    return folder


def service(tmp_path: Path, port: int, source: Path, *, hold_s: float = 1.0,
            extra: str = "", device: str = DEVICE,
            url: str | None = None) -> subprocess.Popen[str]:
    """`appliance run` as a real process, publishing to the test broker."""
    cfg = tmp_path / "eyepiece.toml"
    cfg.write_text(f"""
[source]
uri = "replay:{source}"
fps = 20.0
hold_s = {hold_s}
[stability]
stable_s = 0.2
[display]
sink = "none"
[overlay]
enabled = false
[store]
path = "{tmp_path / 'results.sqlite'}"
[mqtt]
url = "{url or f'mqtt://127.0.0.1:{port}'}"
device_id = "{device}"
keepalive_s = 5
metrics_interval_s = 1.0
{extra}
""", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The log goes to a file, as journald reads it on the box: a pipe nobody reads while
    # the service runs would fill up and stall it.
    log = (tmp_path / "service.log").open("a", encoding="utf-8")
    return subprocess.Popen([sys.executable, "-m", "appliance", "run", "--config", str(cfg)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log,
                            text=True)


def stored_results(tmp_path: Path) -> int:
    path = tmp_path / "results.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        except sqlite3.OperationalError as exc:
            # The service has created the file but not yet committed its schema.
            if "no such table" in str(exc):
                return 0
            raise


def finish(proc: subprocess.Popen[str], log: Path, timeout_s: float = WAIT_S) -> str:
    """Wait for the service to end; its log, which must hold no traceback."""
    try:
        proc.wait(timeout=timeout_s)
    finally:
        proc.kill()
    text = log.read_text(encoding="utf-8")
    assert "Traceback" not in text, text[-5000:]
    return text


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", persistence=True) as b:
        yield b


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_birth_then_will_when_the_service_is_killed(tmp_path: Path, broker: Mosquitto,
                                                    fields: Path, protocol: str) -> None:
    sub = Subscriber(broker.port, f"eyepiece/{DEVICE}/status", client_id="status-watch")
    proc = service(tmp_path, broker.port, fields, hold_s=30.0,
                   extra=f'protocol = "{protocol}"\n')
    try:
        sub.wait_for("birth", lambda ms: any(json.loads(m.payload)["status"] == "online"
                                             for m in ms))
        birth = next(p for p in sub.payloads("status") if p["status"] == "online")
        assert birth["device_id"] == DEVICE and birth["assay"] == "her2"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
        sub.wait_for("will", lambda ms: json.loads(ms[-1].payload)["status"] == "offline")
    finally:
        proc.kill()
        sub.close()


def test_a_broker_outage_loses_nothing(tmp_path: Path, persistent_broker: Mosquitto,
                                       fields: Path) -> None:
    broker = persistent_broker
    sub = Subscriber(broker.port, f"eyepiece/{DEVICE}/field")
    proc = service(tmp_path, broker.port, fields)
    try:
        sub.wait_for("the first fields", lambda ms: fields_on(ms) >= 2)
        broker.stop()  # the hospital network goes away while fields keep coming
        before = stored_results(tmp_path)
        deadline = time.monotonic() + WAIT_S
        while stored_results(tmp_path) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored_results(tmp_path) >= before + 2  # stored while the broker was away
        broker.start()
        log = finish(proc, tmp_path / "service.log")
        assert proc.returncode == 0, log[-3000:]
        total = stored_results(tmp_path)
        messages = sub.wait_for("every stored field", lambda ms: fields_on(ms) >= total)
    finally:
        proc.kill()
        sub.close()
    unique: dict[str, int] = {}
    for m in messages:
        if m.topic.endswith("/field"):
            body = json.loads(m.payload)
            unique[body["msg_id"]] = body["seq"]
    assert len(unique) == total == 10
    assert sorted(unique.values()) == list(range(1, total + 1))  # in order, nothing missing


def test_a_crash_with_a_backlog_delivers_it_after_restart(tmp_path: Path, tmp_path_factory:
                                                          pytest.TempPathFactory,
                                                          fields: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    port = broker.port
    broker.stop()  # the port is kept; the broker is down while the box scores
    proc = service(tmp_path, port, fields, hold_s=1.0)
    try:
        deadline = time.monotonic() + WAIT_S
        while stored_results(tmp_path) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored_results(tmp_path) >= 3
        proc.send_signal(signal.SIGKILL)  # a power cut with results only on disk
        proc.wait(timeout=WAIT_S)
    finally:
        proc.kill()
    backlog = stored_results(tmp_path)
    broker.start()
    try:
        sub = Subscriber(broker.port, f"eyepiece/{DEVICE}/field")
        one = tmp_path_factory.mktemp("one")
        write_rgb(one / "g.png", generate_field(FieldSpec(seed=990_600, width=480,
                                                          height=360)).image)
        again = service(tmp_path, broker.port, one, hold_s=1.0)
        try:
            messages = sub.wait_for("the backlog", lambda ms: fields_on(ms) >= backlog)
            finish(again, tmp_path / "service.log")
        finally:
            again.kill()
            sub.close()
    finally:
        broker.stop()
    seqs = {json.loads(m.payload)["seq"] for m in messages if m.topic.endswith("/field")}
    log = (tmp_path / "service.log").read_text(encoding="utf-8")
    assert set(range(1, backlog + 1)) <= seqs, (sorted(seqs), backlog, log[-3000:])


def bad_commands(n: int) -> list[tuple[str, bytes]]:
    """Malformed, oversized and wrong-type commands of every kind."""
    out = []
    for i in range(n):
        name = ("ping", "start_case", "set_objective", "end_case", "nonsense")[i % 5]
        kind = i % 7
        payload = (b"\xff\xfe" if kind == 0 else b"[1, 2]" if kind == 1
                   else b"{" * (i % 50 + 1) if kind == 2 else b"x" * 20000 if kind == 3
                   else json.dumps({"case_id": i, "objective": [i]}).encode() if kind == 4
                   else b'{"unknown": 1}' if kind == 5 else b"null")
        out.append((name, payload))
    return out


def test_malformed_commands_get_error_replies_and_scoring_goes_on(
        tmp_path: Path, broker: Mosquitto, fields: Path) -> None:
    status = Subscriber(broker.port, f"eyepiece/{DEVICE}/status", client_id="status-watch")
    replies = Subscriber(broker.port, f"eyepiece/{DEVICE}/cmd/+/reply", client_id="replies")
    proc = service(tmp_path, broker.port, fields, hold_s=6.0)  # outlasts the flood
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dashboard-cmd")
    try:
        status.wait_for("birth", lambda ms: len(ms) >= 1)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        sent = 0
        commands = bad_commands(1000)
        for start in range(0, len(commands), 50):  # in batches: the broker queues 1,000 at most
            for name, payload in commands[start:start + 50]:
                sender.publish(f"eyepiece/{DEVICE}/cmd/{name}", payload, qos=1)
                sent += 1
            replies.wait_for(f"{sent} replies", lambda ms, n=sent: len(ms) >= n)
        sender.publish(f"eyepiece/{DEVICE}/cmd/ping", b'{"request_id": "after-flood"}', qos=1)
        messages = replies.wait_for("the last reply", lambda ms: len(ms) >= 1001)
        answers = [json.loads(m.payload) for m in messages]
        assert sum(not a["ok"] for a in answers) == 1000
        assert any(a["ok"] and a.get("request_id") == "after-flood" for a in answers)
        before = stored_results(tmp_path)
        deadline = time.monotonic() + WAIT_S
        while stored_results(tmp_path) <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored_results(tmp_path) > before  # still scoring after the flood
        assert len(status.payloads("status")) == 1  # never disconnected meanwhile
    finally:
        sender.loop_stop()
        proc.send_signal(signal.SIGTERM)
        finish(proc, tmp_path / "service.log")
        status.close()
        replies.close()


def test_over_tls_with_a_password_the_box_publishes_under_its_own_prefix(
        tmp_path: Path, secure_broker: Mosquitto, tls_certs: Any, fields: Path) -> None:
    """mqtts:// with the site CA and a password from a file, against the ACL of deploy/."""
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(secure_broker.users["box-a"] + "\n", encoding="utf-8")
    dashboard = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dash-tls")
    dashboard.username_pw_set("dashboard", secure_broker.users["dashboard"])
    dashboard.tls_set(ca_certs=str(tls_certs.ca.cert))
    seen: list[mqtt.MQTTMessage] = []
    dashboard.on_message = lambda _c, _u, m: seen.append(m)
    dashboard.on_connect = lambda c, *_: c.subscribe("eyepiece/#", qos=1)
    dashboard.connect("127.0.0.1", secure_broker.port)
    dashboard.loop_start()
    extra = (f'username = "box-a"\npassword_file = "{password_file}"\n'
             f'tls_ca = "{tls_certs.ca.cert}"\n')
    cfg_url = f"mqtts://localhost:{secure_broker.port}"
    proc = service(tmp_path, secure_broker.port, fields, hold_s=1.0,
                   extra=extra, device="box-a", url=cfg_url)
    try:
        deadline = time.monotonic() + WAIT_S
        while not any(m.topic == "eyepiece/box-a/field" for m in seen) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        topics = {m.topic for m in seen}
        assert "eyepiece/box-a/status" in topics and "eyepiece/box-a/field" in topics
        log = (tmp_path / "service.log").read_text(encoding="utf-8")
        assert secure_broker.users["box-a"] not in log  # the password is never logged
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc, tmp_path / "service.log")
        dashboard.loop_stop()


def test_set_objective_on_a_reported_view_publishes_its_new_reading_superseding_the_first(
        tmp_path: Path, broker: Mosquitto) -> None:
    """The whole path on a real broker and a real `appliance run`: a view is reported,
    the dashboard sets the objective while it is held, and the box publishes the view's
    new reading naming the report it replaces; both messages follow the field schema."""
    from tests.test_mqtt_contract import schema_validators

    folder = tmp_path / "one-view"
    folder.mkdir()
    write_rgb(folder / "f.png", generate_field(FieldSpec(
        seed=990_530, width=480, height=360, target_score="3+")).image)
    published = Subscriber(broker.port, f"eyepiece/{DEVICE}/field", client_id="fields")
    replies = Subscriber(broker.port, f"eyepiece/{DEVICE}/cmd/+/reply", client_id="replies")
    proc = service(tmp_path, broker.port, folder, hold_s=300.0)  # one view, held throughout
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dashboard-cmd")
    try:
        published.wait_for("the view's report", lambda ms: fields_on(ms) >= 1)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        sender.publish(f"eyepiece/{DEVICE}/cmd/set_objective",
                       b'{"objective": "20x", "request_id": "o-1"}', qos=1)
        reply = json.loads(replies.wait_for("the reply", lambda ms: len(ms) >= 1)[0].payload)
        assert reply["ok"] is True, reply
        published.wait_for("the new reading", lambda ms: fields_on(ms) >= 2)
        time.sleep(1.0)  # a third report would come now, if the view were read again
    finally:
        sender.loop_stop()
        proc.send_signal(signal.SIGTERM)
        finish(proc, tmp_path / "service.log")
        published.close()
        replies.close()
    by_id = {m["msg_id"]: m for m in published.payloads("/field")}
    first, second = sorted(by_id.values(), key=lambda m: m["seq"])
    assert first["result"]["supersedes"] is None
    assert first["result"]["um_per_px_source"] == "estimated"
    assert second["result"]["um_per_px_source"] == "objective"
    assert second["result"]["supersedes"] == {"file": first["result"]["file"],
                                              "seq": first["result"]["seq"],
                                              "reason": "settings_changed"}
    validator = schema_validators()["field"]
    for message in (first, second):
        assert list(validator.iter_errors(message)) == []
