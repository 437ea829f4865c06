"""Cases in the running service: a SIGKILL keeps the open case, MQTT drives the workflow.

`appliance run` runs as a real process on replayed generated fields; cases are opened and
closed by the `appliance case` CLI (another process on the same store) and by MQTT
commands through a real Mosquitto. Nothing here is timed: waits are generous guards.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Mosquitto
from tests.imagefiles import write_rgb
from tests.test_mqtt_service import DEVICE, REPO, WAIT_S, Subscriber, finish
from tools.synth.her2_slide import SlideSpec, generate_slide


@pytest.fixture(scope="module")
def tumour_fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("case-fields")
    for f in generate_slide(SlideSpec(seed=11, control_fields=1,
                                      tumour_scores=("1+", "2+", "3+"), width=480,
                                      height=360)):
        if f.role == "tumour":
            write_rgb(folder / f"{f.name}.png", f.image)
    return folder


def config(tmp_path: Path, source: Path, *, mqtt_port: int | None = None) -> Path:
    path = tmp_path / "eyepiece.toml"
    mqtt_section = (f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\ndevice_id = "{DEVICE}"\n'
                    "metrics_interval_s = 1.0\n") if mqtt_port else ""
    path.write_text(f"""
[source]
uri = "replay:{source}"
fps = 20.0
hold_s = 1.0
loop = true
[optics]
um_per_px = 0.5
[stability]
stable_s = 0.2
[display]
sink = "none"
[overlay]
enabled = false
[store]
path = "{tmp_path / 'results.sqlite'}"
{mqtt_section}""", encoding="utf-8")
    return path


def appliance(*args: str, cwd: Path, background: bool = False,
              log: Path | None = None) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "appliance", *args]
    if background:
        assert log is not None
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=log.open("a", encoding="utf-8"), text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=WAIT_S, check=False)


def case_fields(db: Path, case_id: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM case_fields WHERE case_id = ?",
                                    (case_id,)).fetchone()[0])
        except sqlite3.OperationalError:  # the service has not created the tables yet
            return 0


def dashboard(port: int, replies: Subscriber
              ) -> tuple[mqtt.Client, Callable[[str, dict[str, object]], dict[str, Any]]]:
    """The dashboard's command sender (started; stop its loop when done), and a function
    that sends one command and waits for the box's reply to it."""
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dashboard-cmd")
    sender.connect("127.0.0.1", port)
    sender.loop_start()
    sent: list[str] = []

    def command(name: str, body: dict[str, object]) -> dict[str, Any]:
        sent.append(name)
        rid = f"r-{len(sent)}"
        sender.publish(f"eyepiece/{DEVICE}/cmd/{name}", json.dumps(
            {**body, "request_id": rid}), qos=1)
        got = replies.wait_for(f"reply to {name}", lambda ms: any(
            json.loads(m.payload).get("request_id") == rid for m in ms))
        return next(json.loads(m.payload) for m in got
                    if json.loads(m.payload).get("request_id") == rid)
    return sender, command


def wait_until(what: str, test: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while not test():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S} s")
        time.sleep(0.2)


def test_an_open_case_survives_a_sigkill_and_counts_each_field_once(
        tmp_path: Path, tumour_fields: Path) -> None:
    cfg = config(tmp_path, tumour_fields)
    db = tmp_path / "results.sqlite"
    opened = appliance("case", "start", "c-kill", "--config", str(cfg), cwd=tmp_path)
    assert opened.returncode == 0, opened.stderr
    log = tmp_path / "service.log"
    first = appliance("run", "--config", str(cfg), cwd=tmp_path, background=True, log=log)
    assert isinstance(first, subprocess.Popen)
    try:
        wait_until("two fields in the case", lambda: case_fields(db, "c-kill") >= 2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=WAIT_S)
    finally:
        first.kill()
    before = case_fields(db, "c-kill")
    status = appliance("case", "status", "--json", "--config", str(cfg), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["closed_at"] is None  # still open after the kill
    # The service comes back (systemd restarts it) and the case goes on. Its field memory
    # is new, so the replay shows the same three fields again: the case recognises them.
    second = appliance("run", "--config", str(cfg), cwd=tmp_path, background=True, log=log)
    assert isinstance(second, subprocess.Popen)
    try:
        wait_until("more fields after the restart",
                   lambda: case_fields(db, "c-kill") >= before + 3)
        second.send_signal(signal.SIGTERM)
        text = finish(second, log)
    finally:
        second.kill()
    assert "case c-kill was left open" in text
    closed = appliance("case", "end", "--config", str(cfg), cwd=tmp_path)
    assert closed.returncode == 0, closed.stderr
    summary = json.loads(appliance("case", "status", "c-kill", "--json", "--config",
                                   str(cfg), cwd=tmp_path).stdout)
    assert summary["closed_at"] is not None
    assert summary["fields_total"] >= before + 3
    assert summary["fields_counted"] == 3  # three distinct fields, however often seen
    assert sum(f["counted"] for f in summary["fields"]) == 3
    assert summary["control"]["status"] == "not_checked"


def test_mqtt_commands_drive_the_case_and_the_case_message_carries_the_score(
        tmp_path: Path, broker: Mosquitto, tumour_fields: Path) -> None:
    cfg = config(tmp_path, tumour_fields, mqtt_port=broker.port)
    status = Subscriber(broker.port, f"eyepiece/{DEVICE}/status", client_id="status-watch")
    replies = Subscriber(broker.port, f"eyepiece/{DEVICE}/cmd/+/reply", client_id="replies")
    cases = Subscriber(broker.port, f"eyepiece/{DEVICE}/case", client_id="cases")
    fields = Subscriber(broker.port, f"eyepiece/{DEVICE}/field", client_id="fields")
    log = tmp_path / "service.log"
    proc = appliance("run", "--config", str(cfg), cwd=tmp_path, background=True, log=log)
    assert isinstance(proc, subprocess.Popen)
    sender, command = dashboard(broker.port, replies)
    try:
        # Commands are not queued for a box that has not subscribed yet: wait for its birth.
        status.wait_for("birth", lambda ms: any(json.loads(m.payload)["status"] == "online"
                                                for m in ms))
        assert command("start_case", {"case_id": "c-mqtt"})["ok"] is True
        again = command("start_case", {"case_id": "c-other"})
        assert again["ok"] is False and "still open" in json.dumps(again)
        started = command("start_control", {"expected": "3+"})
        assert started["ok"] is True, started
        decided = command("end_control", {})
        assert decided["ok"] is True, decided
        # Tumour tissue shown as a 3+ control (or none shown yet) must not pass.
        assert decided["result"]["valid"] is False
        fields.wait_for("fields of the case", lambda ms: sum(
            json.loads(m.payload)["case_id"] == "c-mqtt" for m in ms) >= 2)
        ended = command("end_case", {"case_id": "c-mqtt"})
        assert ended["ok"] is True, ended
        message = cases.wait_for("the case message", lambda ms: len(ms) >= 1)[0]
        body = json.loads(message.payload)
        assert body["schema"] == "eyepiece.case/1"
        schema = json.loads((REPO / "docs" / "mqtt" / "case.schema.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(body)
        case = body["case"]
        assert case["case_id"] == "c-mqtt" and case["control"]["status"] == "failed"
        assert case["fields_total"] >= 2 and case["score"] in ("0", "1+", "2+", "3+", None)
        field_message = json.loads(fields.messages[-1].payload)
        assert field_message["result"]["case"]["case_id"] == "c-mqtt"
    finally:
        sender.loop_stop()
        proc.send_signal(signal.SIGTERM)
        finish(proc, log)
        for s in (status, replies, cases, fields):
            s.close()
    audit = appliance("audit", "export", "--case", "c-mqtt", "--config", str(cfg), cwd=tmp_path)
    entries = [json.loads(line) for line in audit.stdout.splitlines()]
    commands = [e["detail"]["name"] for e in entries if e["kind"] == "command"]
    assert commands[:4] == ["start_case", "start_control", "end_control", "end_case"]
    verify = appliance("audit", "verify", "--config", str(cfg), cwd=tmp_path)
    assert verify.returncode == 0 and "intact" in verify.stdout
