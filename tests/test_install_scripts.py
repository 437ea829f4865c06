"""The device install scripts (deploy/jetson, deploy/pi, deploy/common.sh).

The scripts run for real only on a device as root. Here they run with ``--dry-run --force`` and
``EYEPIECE_ROOT`` set to a temporary folder, so the printed plan is checked and nothing on this
machine is touched; the helpers that decide idempotence (copy-if-changed, config writing) run
for real inside that folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance.config import load_config
from tests.broker import ACL_EXAMPLE, Mosquitto, TlsListener, render_config
from tests.broker import WAIT_S as BROKER_WAIT_S
from tests.certs import CertSet

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
JETSON = DEPLOY / "jetson" / "install.sh"
PI = DEPLOY / "pi" / "install.sh"
COMMON = DEPLOY / "common.sh"
SCRIPTS = [JETSON, PI, COMMON]
TIMEOUT_S = 20
# This checkout's `appliance` command (the venv of `make test`).
APPLIANCE = REPO / ".venv" / "bin" / "appliance"


def run_script(script: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an install script under bash with EYEPIECE_ROOT=root."""
    env = {**os.environ, "EYEPIECE_ROOT": str(root)}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env=env, timeout=TIMEOUT_S, check=False)


def run_common(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run bash code with deploy/common.sh sourced and EYEPIECE_ROOT=root."""
    env = {**os.environ, "EYEPIECE_ROOT": str(root)}
    script = f"set -euo pipefail\n. {COMMON}\n{code}\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S, check=False)


def plan(script: Path, root: Path, *args: str) -> list[str]:
    """The lines of a successful dry run."""
    proc = run_script(script, root, "--dry-run", "--force", *args)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.splitlines()


def index_of(lines: list[str], *needles: str) -> int:
    """Index of the first line holding every needle; fails the test naming them if none does."""
    for i, line in enumerate(lines):
        if all(n in line for n in needles):
            return i
    raise AssertionError(f"no line with {needles} in the plan:\n" + "\n".join(lines))


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------------------ syntax, lint


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_bash_syntax(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", [JETSON, PI], ids=["jetson", "pi"])
def test_scripts_are_executable_and_strict(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


def test_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, "-x", "-s", "bash", *map(str, SCRIPTS)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                          cwd=DEPLOY)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ dry runs


def test_jetson_dry_run_plan_in_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    lines = plan(JETSON, root)
    steps = [
        index_of(lines, "apt-get install", "python3-venv", "python3-opencv", "python3-libgpiod"),
        index_of(lines, "usermod -a -G video,render,gpio eyepiece".replace(",", "\\,")),
        index_of(lines, "install -d", f"{root}/var/lib/eyepiece"),
        index_of(lines, "python3 -m venv --system-site-packages", f"{root}/opt/eyepiece/venv"),
        index_of(lines, "pip install", f"{REPO}\\[jetson\\]"),
        index_of(lines, "pip uninstall", "opencv-python-headless"),
        index_of(lines, "install -D", "models/her2/manifest.json"),
        index_of(lines, "config --defaults >", f"{root}/etc/eyepiece/eyepiece.toml.new"),
        index_of(lines, "toml_set inference backend", "tensorrt"),
        index_of(lines, "install -D", "99-eyepiece.rules", f"{root}/etc/udev/rules.d/"),
        index_of(lines, "udevadm control --reload-rules"),
        index_of(lines, "install -D", f"{root}/etc/systemd/system/eyepiece-engine.service"),
        index_of(lines, "install -D", f"{root}/etc/systemd/system/eyepiece.service"),
        index_of(lines, "systemctl daemon-reload"),
        index_of(lines, "systemctl enable eyepiece-engine.service eyepiece.service"),
    ]
    assert steps == sorted(steps), f"steps out of order: {steps}\n" + "\n".join(lines)
    # Every shipped model file is in the plan, not just the manifest.
    for model in (REPO / "models").rglob("*"):
        if model.is_file():
            index_of(lines, "install -D", str(model))
    assert files_under(root) == [], "a dry run wrote files"


def test_pi_dry_run_plan_in_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    lines = plan(PI, root)
    steps = [
        index_of(lines, "apt-get install", "python3-picamera2", "python3-pygame",
                 "python3-libgpiod"),
        index_of(lines, "python3 -m venv --system-site-packages"),
        index_of(lines, "pip install", "onnxruntime", f"{REPO}\\[pi\\]"),
        index_of(lines, "config --defaults >"),
        index_of(lines, "install -D", "99-eyepiece.rules"),
        index_of(lines, "install -D", f"{root}/etc/systemd/system/eyepiece.service"),
        index_of(lines, "systemctl enable eyepiece.service"),
    ]
    assert steps == sorted(steps), f"steps out of order: {steps}"
    text = "\n".join(lines)
    assert "eyepiece-engine" not in text, "the Pi has no TensorRT and no engine unit"
    assert "tensorrt" not in text
    assert "pip uninstall" not in text
    assert files_under(root) == []


def test_dry_run_with_existing_install_skips_what_is_there(tmp_path: Path) -> None:
    """A second run leaves the config, credential, venv and identical files alone."""
    root = tmp_path / "root"
    (root / "etc/eyepiece/credentials").mkdir(parents=True)
    (root / "etc/eyepiece/eyepiece.toml").write_text("# the site's own\n", encoding="utf-8")
    (root / "etc/eyepiece/credentials/mqtt-password").write_text("secret", encoding="utf-8")
    venv_python = root / "opt/eyepiece/venv/bin/python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("", encoding="utf-8")
    venv_python.chmod(0o755)
    rule = root / "etc/udev/rules.d/99-eyepiece.rules"
    rule.parent.mkdir(parents=True)
    shutil.copyfile(DEPLOY / "udev" / "99-eyepiece.rules", rule)

    lines = plan(PI, root)
    text = "\n".join(lines)
    assert "config exists, left as it is" in text
    assert "config --defaults" not in text
    assert "credential /etc/eyepiece/credentials/mqtt-password exists" in text
    assert "venv exists" in text and "python3 -m venv" not in text
    assert "unchanged /etc/udev/rules.d/99-eyepiece.rules" in text
    assert not any("install -D" in ln and "99-eyepiece.rules" in ln for ln in lines)
    assert (root / "etc/eyepiece/eyepiece.toml").read_text(encoding="utf-8") == "# the site's own\n"


def test_jetson_refuses_a_non_jetson_without_force(tmp_path: Path) -> None:
    proc = run_script(JETSON, tmp_path / "root", "--dry-run")
    assert proc.returncode != 0
    assert "/etc/nv_tegra_release" in proc.stderr and "--force" in proc.stderr


def test_jetson_accepts_a_jetson_without_force(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n",
                                               encoding="utf-8")
    proc = run_script(JETSON, root, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "systemctl enable" in proc.stdout


def test_pi_refuses_a_non_pi_without_force(tmp_path: Path) -> None:
    proc = run_script(PI, tmp_path / "root", "--dry-run")
    assert proc.returncode != 0
    assert "Raspberry Pi" in proc.stderr


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    proc = run_script(PI, tmp_path, "--dry-run", "--bogus")
    assert proc.returncode != 0 and "unknown option --bogus" in proc.stderr
    proc = run_script(PI, tmp_path, "--dry-run", "--force", str(tmp_path))
    assert proc.returncode != 0 and "not an Eyepiece checkout" in proc.stderr


# ------------------------------------------------------------------------------ helpers for real


def test_install_file_copies_once_then_leaves_the_file_alone(tmp_path: Path) -> None:
    src = tmp_path / "unit.service"
    src.write_text("[Unit]\n", encoding="utf-8")
    root = tmp_path / "root"
    dest = root / "etc/systemd/system/unit.service"
    code = f"install_file {src} /etc/systemd/system/unit.service 0644"

    first = run_common(root, code)
    assert first.returncode == 0, first.stderr
    assert dest.read_text(encoding="utf-8") == "[Unit]\n"
    assert dest.stat().st_mode & 0o777 == 0o644
    stamp = dest.stat().st_mtime_ns

    second = run_common(root, code)
    assert second.returncode == 0, second.stderr
    assert "unchanged /etc/systemd/system/unit.service" in second.stdout
    assert dest.stat().st_mtime_ns == stamp

    src.write_text("[Unit]\nDescription=new\n", encoding="utf-8")
    third = run_common(root, code)
    assert third.returncode == 0, third.stderr
    assert "Description=new" in dest.read_text(encoding="utf-8")


def test_install_file_names_a_missing_source(tmp_path: Path) -> None:
    proc = run_common(tmp_path, f"install_file {tmp_path}/nope /etc/x 0644")
    assert proc.returncode != 0 and f"missing file to install: {tmp_path}/nope" in proc.stderr


def defaults_toml() -> str:
    proc = subprocess.run([str(APPLIANCE), "config", "--defaults"], capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=True, cwd=REPO)
    return proc.stdout


def test_toml_set_gives_a_valid_config_with_the_box_paths(tmp_path: Path) -> None:
    src = tmp_path / "defaults.toml"
    src.write_text(defaults_toml(), encoding="utf-8")
    out = tmp_path / "box.toml"
    code = (f"toml_set inference backend '\"tensorrt\"' < {src} "
            f"| toml_set store path '\"/var/lib/eyepiece/results.sqlite\"' "
            f"| toml_set display path '\"/var/lib/eyepiece/display/latest.jpg\"' > {out}")
    proc = run_common(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    cfg = load_config(out)
    assert cfg.inference.backend == "tensorrt"
    assert cfg.store.path == "/var/lib/eyepiece/results.sqlite"
    # `path` is a key in [store] and [display]: each section got its own value.
    assert cfg.display.path == "/var/lib/eyepiece/display/latest.jpg"
    assert cfg.overlay.dir == "var/overlays"


def test_toml_set_fails_on_a_key_not_in_the_section(tmp_path: Path) -> None:
    src = tmp_path / "defaults.toml"
    src.write_text(defaults_toml(), encoding="utf-8")
    proc = run_common(tmp_path, f"toml_set store engine_dir '\"x\"' < {src} > /dev/null")
    assert proc.returncode != 0
    assert "no key engine_dir in [store]" in proc.stderr


def test_write_default_config_settings_all_exist_in_the_defaults(tmp_path: Path) -> None:
    """Every key the installer sets is a real key of the config: a rename would fail here."""
    venv_bin = tmp_path / "root/opt/eyepiece/venv/bin"
    venv_bin.mkdir(parents=True)
    # The box's `appliance` is this checkout's.
    (venv_bin / "appliance").symlink_to(APPLIANCE)
    (tmp_path / "root/etc/eyepiece").mkdir(parents=True)
    proc = run_common(tmp_path / "root", "write_default_config 'inference backend \"tensorrt\"'")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = load_config(tmp_path / "root/etc/eyepiece/eyepiece.toml")
    assert cfg.inference.backend == "tensorrt"
    assert cfg.inference.models_dir == "/opt/eyepiece/models"
    assert cfg.inference.engine_dir == "/var/lib/eyepiece/engines"
    assert cfg.store.path == "/var/lib/eyepiece/results.sqlite"
    assert cfg.overlay.dir == "/var/lib/eyepiece/overlays"
    assert cfg.mqtt.password_file == "/run/credentials/eyepiece.service/mqtt-password"
    # Run again: the existing file is kept as it is.
    before = (tmp_path / "root/etc/eyepiece/eyepiece.toml").read_bytes()
    again = run_common(tmp_path / "root", "write_default_config")
    assert again.returncode == 0 and "config exists" in again.stdout
    assert (tmp_path / "root/etc/eyepiece/eyepiece.toml").read_bytes() == before


# ------------------------------------------------------------------------------ mosquitto bridge

BRIDGE_EXAMPLE = DEPLOY / "mosquitto" / "bridge.conf.example"
BOX = "box-a"


class Client:
    """A paho client that keeps every message of its subscription (plain or TLS)."""

    def __init__(self, port: int, topic: str, client_id: str,
                 tls: tuple[Path, Path, Path] | None = None,
                 login: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if tls is not None:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        if login is not None:
            self.client.username_pw_set(*login)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not subscribed.wait(BROKER_WAIT_S):
            raise AssertionError(f"{client_id} could not subscribe to {topic} on port {port}")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(self, topic: str, payload: bytes) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: (topic, payload) in self.messages,
                                       BROKER_WAIT_S):
                raise AssertionError(f"no {topic} {payload!r}; got {self.messages}")

    def count(self, topic: str) -> int:
        with self._cond:
            return sum(1 for t, _ in self.messages if t == topic)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(BROKER_WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bridge_config(port: int, hospital_port: int, certs: CertSet, workdir: Path) -> str:
    """bridge.conf.example with the box id, the hospital's address and the paths filled in."""
    box = certs.clients[BOX]
    text = BRIDGE_EXAMPLE.read_text(encoding="utf-8")
    for old, new in [
        ("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1"),
        ("HOSPITAL_BROKER:8883", f"127.0.0.1:{hospital_port}"),
        ("/var/lib/mosquitto/", f"{workdir}/"),
        ("/etc/mosquitto/ca_certificates/eyepiece-ca.crt", str(certs.ca.cert)),
        ("/etc/mosquitto/certs/BOX_ID.crt", str(box.cert)),
        ("/etc/mosquitto/certs/BOX_ID.key", str(box.key)),
        ("CHANGE_ME", "box-a-password"),
        ("BOX_ID", BOX),
    ]:
        assert old in text, f"{old!r} is no longer in {BRIDGE_EXAMPLE.name}"
        text = text.replace(old, new)
    # The user line (as root, mosquitto would switch to a user that cannot read tmp files).
    user_line = next(ln for ln in render_config(0).splitlines() if ln.startswith("user "))
    return f"{text}\n{user_line}\nlog_dest stderr\nlog_type all\n"


def test_bridge_example_carries_box_topics_out_and_commands_in(tmp_path: Path,
                                                               tls_certs: CertSet) -> None:
    """The example against a real hospital broker (deploy/mosquitto's ACL, mutual TLS)."""
    hospital = Mosquitto(tmp_path / "hospital", acl_file=ACL_EXAMPLE,
                         users={BOX: "box-a-password", "dashboard": "dashboard-password"},
                         tls=TlsListener.from_certs(tls_certs, require_certificate=True))
    with hospital:
        dash_cert = tls_certs.clients["dashboard"]
        dashboard = Client(hospital.port, f"eyepiece/{BOX}/#", "dashboard-test",
                           tls=(tls_certs.ca.cert, dash_cert.cert, dash_cert.key),
                           login=("dashboard", "dashboard-password"))
        (tmp_path / "box").mkdir()
        local = Mosquitto(tmp_path / "box", config_factory=lambda port: bridge_config(
            port, hospital.port, tls_certs, tmp_path / "box"))
        try:
            with local:
                # The bridge announces itself on a topic the box may write: it is connected.
                dashboard.wait_for(f"eyepiece/{BOX}/bridge", b"1")
                box = Client(local.port, f"eyepiece/{BOX}/cmd/+", "box-test")
                try:
                    box.publish(f"eyepiece/{BOX}/field", b"field-1")
                    box.publish(f"eyepiece/{BOX}/cmd/ping/reply", b"reply-1")
                    dashboard.wait_for(f"eyepiece/{BOX}/field", b"field-1")
                    dashboard.wait_for(f"eyepiece/{BOX}/cmd/ping/reply", b"reply-1")
                    dashboard.publish(f"eyepiece/{BOX}/cmd/ping", b"cmd-1")
                    box.wait_for(f"eyepiece/{BOX}/cmd/ping", b"cmd-1")
                    # A command published on the box's broker stays there: only the
                    # dashboard commands a box through the hospital broker.
                    box.publish(f"eyepiece/{BOX}/cmd/ping", b"local-cmd")
                    box.wait_for(f"eyepiece/{BOX}/cmd/ping", b"local-cmd")
                    # A command must not come back out over the bridge (no echo, no loop).
                    time.sleep(0.5)
                    assert dashboard.count(f"eyepiece/{BOX}/cmd/ping") == 1  # cmd-1 only
                    assert box.count(f"eyepiece/{BOX}/cmd/ping") == 2  # cmd-1, local-cmd
                finally:
                    box.close()
        finally:
            dashboard.close()
