"""The `appliance` command end to end, in real processes, with the shipped model."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from appliance.outputs.result_json import load_schema
from tests.imagefiles import bad_inputs, write_rgb
from tools.synth.her2_fields import FieldSpec, generate_field

REPO = Path(__file__).resolve().parent.parent


def appliance(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the command the way a user does (python -m appliance)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def good_field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    field = generate_field(FieldSpec(seed=990_001, target_score="3+", um_per_px=0.5))
    return write_rgb(tmp_path_factory.mktemp("good") / "field_3plus.png", field.image)


def rows(store: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(store) as conn:
        return list(conn.execute("SELECT file, status, score FROM results ORDER BY id"))


def rows_so_far(store: Path) -> list[tuple[str, str, str | None]]:
    """Rows, or none while the service has created the file but not yet committed its schema."""
    if not store.exists():
        return []
    try:
        return rows(store)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def test_score_json_every_bad_input_is_a_clear_refusal(tmp_path: Path, good_field: Path) -> None:
    import cv2

    good = cv2.cvtColor(cv2.imread(str(good_field)), cv2.COLOR_BGR2RGB)
    bad = bad_inputs(tmp_path, good[:200, :300])
    store = tmp_path / "results.sqlite"
    images = [str(good_field), *map(str, bad.values())]
    proc = appliance("score", "--assay", "her2", "--json", "--store", str(store),
                     "--overlay-dir", str(tmp_path / "overlays"), *images, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["file"] for o in lines] == images
    schema = load_schema()
    for obj in lines:
        jsonschema.validate(obj, schema)
    first, *refused = lines
    assert first["status"] == "scored" and first["score"] == "3+", first
    assert first["model"]["sha256"] and first["tumour_cells"] >= 20
    for obj, kind in zip(refused, bad, strict=True):
        assert obj["status"] == "not_scorable", kind
        assert obj["reason"], kind
    codes = {kind: obj["reason_code"] for obj, kind in zip(refused, bad, strict=True)}
    assert codes["empty"] == "empty_file"
    assert codes["text"] == "not_an_image"
    assert codes["truncated_jpeg"] == "corrupt_image"
    assert codes["tiff16"] == "unsupported_bit_depth"
    assert codes["grayscale"] == "not_colour"
    assert codes["one_pixel"] == "too_small"
    assert codes["huge"] == "too_large"
    assert codes["fluorescence"] in {"not_brightfield", "under_exposed", "wrong_stain"}
    # Nothing lost: every input is a row in the store, in order.
    assert [r[0] for r in rows(store)] == images
    assert (tmp_path / "overlays").is_dir() and any((tmp_path / "overlays").iterdir())


def test_score_table_output(tmp_path: Path, good_field: Path) -> None:
    proc = appliance("score", str(good_field), "--no-store", "--no-overlay", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert "score" in header and "category" in header
    assert "3+" in row and "positive" in row
    assert not (tmp_path / "var").exists()


def test_run_replays_a_folder_and_stores_every_frame(tmp_path: Path) -> None:
    folder = tmp_path / "fields"
    folder.mkdir()
    for i, score in enumerate(("0", "2+")):
        f = generate_field(FieldSpec(seed=990_010 + i, target_score=score))
        write_rgb(folder / f"f{i}.png", f.image)
    (folder / "f9.png").write_bytes(b"\x89PNG broken")
    store = tmp_path / "run.sqlite"
    proc = appliance("run", "--source", f"replay:{folder}", "--store", str(store),
                     "--overlay-dir", str(tmp_path / "ov"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    stored = rows(store)
    assert [Path(r[0]).name for r in stored] == ["f0.png", "f1.png", "f9.png"]
    assert stored[2][1] == "not_scorable"
    assert "3 fields" in proc.stdout
    assert len(list((tmp_path / "ov").glob("*.png"))) == 2


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, good_field: Path) -> None:
    folder = good_field.parent
    store = tmp_path / "loop.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--source", f"replay:{folder}", "--loop",
         "--fps", "5", "--store", str(store), "--overlay-dir", str(tmp_path / "ov")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if rows_so_far(store):
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    stored = rows(store)
    assert len(stored) >= 1
    printed = [line for line in out.splitlines()[1:] if "field" in line and "reported" not in line]
    # Every result the run announced is in the store: nothing in flight was lost.
    assert len(printed) == len(stored), out
    assert f"{len(stored)} fields reported" in out


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[her2.rules]\npositive_percent = 'ten'\n", encoding="utf-8")
    proc = appliance("run", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2
    assert "her2.rules.positive_percent" in proc.stderr and "number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_defaults_round_trip(tmp_path: Path) -> None:
    proc = appliance("config", "--defaults", cwd=tmp_path)
    assert proc.returncode == 0
    (tmp_path / "defaults.toml").write_text(proc.stdout, encoding="utf-8")
    check = appliance("config", "--validate", str(tmp_path / "defaults.toml"), cwd=tmp_path)
    assert check.returncode == 0 and "valid" in check.stdout


@pytest.mark.parametrize("damage", ["tampered", "missing"])
def test_tampered_or_missing_model_is_refused(tmp_path: Path, good_field: Path,
                                              damage: str) -> None:
    models = tmp_path / "models"
    (models / "her2").mkdir(parents=True)
    for f in (REPO / "models" / "her2").iterdir():
        (models / "her2" / f.name).write_bytes(f.read_bytes())
    int8 = models / "her2" / "her2_int8.onnx"
    if damage == "tampered":
        data = bytearray(int8.read_bytes())
        data[len(data) // 2] ^= 0x01
        int8.write_bytes(bytes(data))
    else:
        int8.unlink()
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[inference]\nmodels_dir = "{models}"\n', encoding="utf-8")
    proc = appliance("score", "--config", str(cfg), "--no-store", str(good_field), cwd=tmp_path)
    assert proc.returncode == 3
    assert ("does not match its manifest" if damage == "tampered" else "missing") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_source_that_cannot_work_here_exits_2_with_the_reason(tmp_path: Path) -> None:
    # PyPI's OpenCV has no GStreamer: a set-up problem, not a camera fault to retry.
    proc = appliance("run", "--source", "gstreamer:videotestsrc ! appsink", "--display", "none",
                     "--store", str(tmp_path / "r.sqlite"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "GStreamer" in proc.stderr and "JetPack" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tensorrt_where_there_is_none_is_a_clear_model_error(tmp_path: Path,
                                                             good_field: Path) -> None:
    cfg = tmp_path / "jetson.toml"
    cfg.write_text(f'[inference]\nbackend = "tensorrt"\nengine_dir = "{tmp_path / "e"}"\n',
                   encoding="utf-8")
    proc = appliance("score", "--config", str(cfg), "--no-store", "--no-overlay",
                     str(good_field), cwd=tmp_path)
    assert proc.returncode == 3
    assert "tensorrt" in proc.stderr.lower() and "Traceback" not in proc.stderr
