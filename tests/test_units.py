"""The systemd units: `systemd-analyze verify` passes and the settings that matter are there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

_UNITS = Path(__file__).resolve().parent.parent / "systemd"
_MAIN = "eyepiece.service"
_ENGINE = "eyepiece-engine.service"
# verify fails on an ExecStart= binary that does not exist, and the venv lives on the
# device only: the copies point at /bin/true instead (everything else stays as shipped).
_DEVICE_BINARIES = ("/opt/eyepiece/venv/bin/appliance", "/opt/eyepiece/venv/bin/python")


def _parse(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys such as DeviceAllow= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting before any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    return _parse((_UNITS / name).read_text(encoding="utf-8"))


def _one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, found {values}"
    return values[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in (_MAIN, _ENGINE):
        text = (_UNITS / name).read_text(encoding="utf-8")
        for binary in _DEVICE_BINARIES:
            text = text.replace(binary, "/bin/true")
        (tmp_path / name).write_text(text, encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"./{_MAIN}", f"./{_ENGINE}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=20, check=False,
    )
    # Unknown keys and unparsable values are only warnings (exit 0): fail on any output.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        f"systemd-analyze verify: rc={done.returncode}\n{done.stdout}{done.stderr}")


def test_main_unit_settings() -> None:
    unit = _unit(_MAIN)
    expected = {
        "Type": "notify", "WatchdogSec": "30", "Restart": "on-failure", "RestartSec": "5",
        "User": "eyepiece", "KillSignal": "SIGTERM", "TimeoutStopSec": "45",
        "StateDirectory": "eyepiece", "ConfigurationDirectory": "eyepiece",
        "ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "DevicePolicy": "closed",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in expected.items():
        assert _one(unit, "Service", key) == value, key
    assert _one(unit, "Unit", "StartLimitIntervalSec") and _one(unit, "Unit", "StartLimitBurst")
    assert "StartLimitBurst" not in unit["Service"]  # ignored there by current systemd
    assert set(_one(unit, "Service", "SupplementaryGroups").split()) >= {"video", "render",
                                                                         "gpio"}
    assert _one(unit, "Service", "LoadCredential").startswith("mqtt-password:")
    families = set(_one(unit, "Service", "RestrictAddressFamilies").split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families and "AF_PACKET" not in families


def test_main_unit_commands_validate_then_run_the_same_config() -> None:
    unit = _unit(_MAIN)
    pre = _one(unit, "Service", "ExecStartPre").split()
    start = _one(unit, "Service", "ExecStart").split()
    assert pre[0] == start[0] == "/opt/eyepiece/venv/bin/appliance"
    assert pre[1:3] == ["config", "--validate"] and start[1] == "run"
    assert start[start.index("--config") + 1] == pre[3]
    assert pre[3].startswith("/etc/eyepiece/")  # inside ConfigurationDirectory=


def test_main_unit_devices() -> None:
    allowed = {entry.split()[0] for entry in _unit(_MAIN)["Service"]["DeviceAllow"]}
    assert {"char-video4linux", "char-drm", "char-gpiochip", "/dev/nvmap"} <= allowed
    assert any(d.startswith("/dev/nvhost-") for d in allowed)
    assert all(d.startswith(("char-", "/dev/")) for d in allowed)


def test_engine_unit_runs_once_before_the_service_on_jetson_only() -> None:
    engine, main = _unit(_ENGINE), _unit(_MAIN)
    assert _one(engine, "Service", "Type") == "oneshot"
    assert _one(engine, "Unit", "ConditionPathExists") == "/etc/nv_tegra_release"
    assert _MAIN in _one(engine, "Unit", "Before").split()
    assert _MAIN in _one(engine, "Install", "RequiredBy").split()
    assert _ENGINE in _one(main, "Unit", "After").split()
    assert _ENGINE in _one(main, "Unit", "Wants").split()
    start = _one(engine, "Service", "ExecStart").split()
    assert start[0] == "/opt/eyepiece/venv/bin/python"
    # The same config as eyepiece.service (its engine_dir), and both assays' engines.
    assert start[1:] == ["-m", "tools.build_engine", "--config", "/etc/eyepiece/eyepiece.toml",
                         "--assay", "all", "--if-needed"]
    main_start = _one(main, "Service", "ExecStart").split()
    assert main_start[main_start.index("--config") + 1] == "/etc/eyepiece/eyepiece.toml"
