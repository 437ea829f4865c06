"""The HEp-2 assay end to end with the shipped classifier: fields, cells, CLI, store, pipeline."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance.assays.hep2.assay import Hep2Assay, model_heads
from appliance.assays.hep2.patterns import REGIONS
from appliance.capture.frame import Frame
from appliance.config import Config, ConfigError, with_overrides
from appliance.inference.manifest import ModelError, load_manifest
from appliance.outputs import hep2_json
from appliance.outputs.hep2_overlay import render_overlay
from appliance.outputs.store import ResultStore
from appliance.service import runner
from appliance.service.lifecycle import ATTENTION_CODES
from tests.broker import Mosquitto
from tests.imagefiles import write_rgb
from tools.synth import camera_looks
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field
from tools.synth.her2_fields import FieldSpec, generate_field

REPO = Path(__file__).resolve().parent.parent
CFG = with_overrides(Config(), {"assay": "hep2"})
VALIDATOR = jsonschema.Draft202012Validator(hep2_json.load_schema())


@pytest.fixture(scope="module")
def assay() -> Iterator[Hep2Assay]:
    with Hep2Assay.from_config(CFG) as a:
        yield a


def field(pattern: str | None, *, seed: int, intensity: float = 120.0,
          mixed: str | None = None) -> np.ndarray:
    patterns = None if pattern is None else (
        ((pattern, 0.5), (mixed, 0.5)) if mixed else ((pattern, 1.0),))
    return generate_hep2_field(Hep2FieldSpec(
        seed=seed, width=800, height=600, um_per_px=0.5, patterns=patterns,
        intensity=intensity, photobleaching=0.0, mitotic_fraction=0.06)).image


def score(assay: Hep2Assay, image: np.ndarray, source: str = "f") -> dict:
    result = assay.score(Frame(image=image, seq=1, timestamp=0.0, source=source,
                               um_per_px=0.5))
    doc = hep2_json.result_to_dict(result, include_cells=True)
    VALIDATOR.validate(doc)
    return doc


def test_a_positive_field_is_called_with_its_icap_code(assay: Hep2Assay) -> None:
    doc = score(assay, field("centromere", seed=71_001))
    assert doc["status"] == "scored" and doc["positive"] is True, doc["reason"]
    assert doc["patterns"][0]["icap"] == "AC-3"
    assert doc["intensity"]["level"] in ("intermediate", "strong")
    assert doc["cell_counts"]["interphase"] >= 20
    assert doc["intensity"]["calibrated"] is False
    assert any("relative units" in w for w in doc["warnings"])


def test_every_result_reports_its_sharpness_and_the_lab_sets_the_focus_limits(
        assay: Hep2Assay) -> None:
    image = field("fine_speckled", seed=71_003)
    doc = score(assay, image)
    assert doc["status"] == "scored" and 2.0 < doc["sharpness"] < 5.0
    sharpness = doc["sharpness"]
    before = assay.cfg
    try:
        # A lab whose sharp fields read higher raises the limits: this field then warns...
        assay.cfg = with_overrides(before, {"hep2.cells.soft_focus_below": sharpness + 0.1})
        soft = score(assay, image)
        assert soft["status"] == "scored" and soft["sharpness"] == sharpness
        assert any(w.startswith(f"soft focus: sharpness {sharpness:.2f}, below "
                                f"{sharpness + 0.1:.2f}") for w in soft["warnings"])
        # ...or is refused, with the number and the limit in the reason.
        assay.cfg = with_overrides(before, {"hep2.cells.min_focus": sharpness + 0.1,
                                            "hep2.cells.soft_focus_below": sharpness + 0.2})
        refused = score(assay, image)
        assert refused["status"] == "not_scorable"
        assert refused["reason_code"] == "out_of_focus" and refused["sharpness"] == sharpness
        assert f"sharpness {sharpness:.2f} is below {sharpness + 0.1:.2f}" in refused["reason"]
    finally:
        assay.cfg = before
    # Without a scale the sharpness is measured at the estimate, and reported.
    unknown = hep2_json.result_to_dict(assay.score(Frame(image=image, seq=2, timestamp=0.0,
                                                         source="f")))
    assert unknown["um_per_px_source"] == "estimated" and unknown["sharpness"] > 0
    with pytest.raises(ConfigError, match=r"hep2\.cells\.soft_focus_below"):
        with_overrides(Config(), {"hep2.cells.min_focus": 2.0,
                                  "hep2.cells.soft_focus_below": 1.9})


def test_a_negative_field_is_ac0(assay: Hep2Assay) -> None:
    doc = score(assay, field("negative", seed=71_002, intensity=6.0))
    assert doc["status"] == "scored" and doc["positive"] is False
    assert [p["icap"] for p in doc["patterns"]] == ["AC-0"]
    assert doc["intensity"]["level"] == "negative"


def test_a_frame_with_nothing_in_view_is_not_called_negative(assay: Hep2Assay) -> None:
    """A black frame (lamp off, shutter closed), sensor noise alone, or an even grey: no
    cell and no light above the noise, so nothing to call negative on."""
    rng = np.random.default_rng(5)
    frames = {"black": np.zeros((480, 640, 3), np.uint8),
              "noise": np.clip(rng.normal(4, 1.5, (480, 640, 3)), 0, 255).astype(np.uint8),
              "grey": np.clip(rng.normal(40, 1.5, (480, 640, 3)), 0, 255).astype(np.uint8)}
    for name, image in frames.items():
        doc = score(assay, image, source=name)
        assert doc["status"] == "not_scorable" and doc["positive"] is None, name
        assert doc["reason_code"] == "nothing_in_view" and "lamp" in doc["reason"]
    assert "nothing_in_view" in ATTENTION_CODES  # the status light asks the user to act
    # The faintest negative the generator draws (2 units: autofluorescence) still shows
    # its cells, and is called negative.
    faint = score(assay, field("negative", seed=71_012, intensity=2.0))
    assert faint["status"] == "scored" and faint["positive"] is False


def test_a_red_counterstain_through_a_long_pass_filter_is_never_a_positive_call(
        assay: Hep2Assay) -> None:
    """A conjugate's red counterstain makes every cell glow red; a long-pass emission
    filter lets it through. A colour camera sees red light and is told of the counterstain;
    a monochrome one records it as FITC light, and a negative well must not be called
    positive from it."""
    truth = generate_hep2_field(Hep2FieldSpec(
        seed=71_013, width=800, height=600, um_per_px=0.5, patterns=(("negative", 1.0),),
        intensity=6.0, photobleaching=0.0))
    lp = camera_looks.long_pass(truth.image, 0.3)
    red = camera_looks.red_counterstain(lp, truth.cell_labels, truth.nucleus_labels, 0.5,
                                        40.0, 0.05, np.random.default_rng(1))
    assert score(assay, lp)["positive"] is False  # the filter alone: still negative
    colour = score(assay, red, source="colour")
    assert colour["reason_code"] == "wrong_stain" and "counterstain" in colour["reason"]
    mono = score(assay, camera_looks.monochrome_sum(red, 0.6), source="mono")
    assert mono["status"] == "not_scorable" and mono["positive"] is None
    assert mono["reason_code"] == "unstained_light" and "band-pass" in mono["reason"]
    assert "unstained_light" in ATTENTION_CODES
    # A lab that declares the counterstain (hep2.stain.red_counterstain) has its colour
    # camera's fields scored in green: the negative well negative, a positive one positive.
    positive = generate_hep2_field(Hep2FieldSpec(
        seed=71_014, width=800, height=600, um_per_px=0.5, patterns=(("centromere", 1.0),),
        intensity=60.0, photobleaching=0.0))
    red_positive = camera_looks.red_counterstain(
        camera_looks.long_pass(positive.image, 0.3), positive.cell_labels,
        positive.nucleus_labels, 0.5, 40.0, 0.05, np.random.default_rng(2))
    original = assay.cfg
    try:
        assay.cfg = with_overrides(original, {"hep2.stain.red_counterstain": True})
        declared = score(assay, red, source="declared")
        declared_positive = score(assay, red_positive, source="declared+")
    finally:
        assay.cfg = original
    assert declared["status"] == "scored" and declared["positive"] is False
    assert declared_positive["positive"] is True
    assert declared_positive["patterns"][0]["icap"] == "AC-3"


def test_a_her2_brightfield_field_is_refused_as_the_wrong_stain(assay: Hep2Assay) -> None:
    her2 = generate_field(FieldSpec(seed=71_003, width=640, height=480, um_per_px=0.5)).image
    doc = score(assay, her2)
    assert doc["status"] == "not_scorable" and doc["reason_code"] == "wrong_stain"
    assert "brightfield" in doc["reason"]


def test_a_monochrome_camera_field_scores_as_its_colour_twin(assay: Hep2Assay) -> None:
    image = field("centromere", seed=71_001)
    grey = np.ascontiguousarray(np.repeat(image[..., 1:2], 3, axis=2))
    colour, mono = score(assay, image), score(assay, grey)
    assert mono["status"] == "scored", mono["reason"]
    assert [p["icap"] for p in mono["patterns"]] == [p["icap"] for p in colour["patterns"]]
    assert mono["intensity"] == colour["intensity"]
    assert any(w.startswith("monochrome image") for w in mono["warnings"])
    assert not any(w.startswith("monochrome image") for w in colour["warnings"])


def test_results_from_mjpg_frames_say_the_frames_were_compressed(assay: Hep2Assay) -> None:
    image = field("homogeneous", seed=71_004)
    said = {}
    for fmt in ("MJPG", "YUYV", "file"):
        result = assay.score(Frame(image=image, seq=1, timestamp=0.0, source="cam",
                                   um_per_px=0.5, pixel_format=fmt))
        assert result.status == "scored", result.reason
        said[fmt] = any("JPEG-compressed frames (MJPG)" in w for w in result.warnings)
    assert said == {"MJPG": True, "YUYV": False, "file": False}


def test_the_overlay_draws_the_call(assay: Hep2Assay) -> None:
    image = field("homogeneous", seed=71_004)
    result = assay.score(Frame(image=image, seq=1, timestamp=0.0, source="f", um_per_px=0.5))
    picture = render_overlay(image, result)
    assert picture.shape[0] > image.shape[0] and picture.shape[1] == image.shape[1]
    assert (picture[: image.shape[0]] != image).any()  # outlines drawn


def test_the_cli_scores_fields_and_cells_and_refuses_bad_files(tmp_path: Path) -> None:
    pos = field("nucleolar_clumpy", seed=71_005)
    write_rgb(tmp_path / "pos.png", pos)
    # A monochrome camera's file: one grey plane.
    assert cv2.imwrite(str(tmp_path / "grey.png"), pos[..., 1])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    f = generate_hep2_field(Hep2FieldSpec(seed=71_006, width=640, height=480, um_per_px=0.5,
                                          patterns=(("golgi", 1.0),), intensity=120.0))
    cell = max(f.cells, key=lambda c: (not c.touches_edge, c.brightness))
    x, y = int(cell.x), int(cell.y)
    write_rgb(tmp_path / "cell.png", np.ascontiguousarray(f.image[max(0, y - 32):y + 32,
                                                                  max(0, x - 32):x + 32]))
    env = {"PYTHONPATH": str(REPO)}
    store = tmp_path / "r.sqlite"
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "score", "--assay", "hep2", "--json",
         "--store", str(store), "--overlay-dir", str(tmp_path / "ov"),
         str(tmp_path / "pos.png"), str(tmp_path / "broken.png"), str(tmp_path / "grey.png")],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    for doc in docs:
        VALIDATOR.validate(doc)
    assert docs[0]["status"] == "scored" and docs[1]["reason_code"] == "corrupt_image"
    assert docs[2]["status"] == "scored" and docs[2]["patterns"] == docs[0]["patterns"]
    with ResultStore(store) as s:
        rows = s.recent(5)
    assert {r["assay"] for r in rows} == {"hep2"} and len(rows) == 3
    assert len(list((tmp_path / "ov").glob("*.png"))) == 2
    cells = subprocess.run(
        [sys.executable, "-m", "appliance", "score", "--assay", "hep2", "--cell", "--json",
         str(tmp_path / "cell.png")], capture_output=True, text=True, env=env, timeout=120,
        check=False)
    assert cells.returncode == 0, cells.stderr
    call = json.loads(cells.stdout)
    assert call["kind"] == "cell" and call["icap"].startswith("AC-")
    assert abs(sum(call["probabilities"].values()) - 1.0) < 1e-3
    assert set(call["regions"]) == set(REGIONS)  # yes / no each: they need not sum to 1
    assert all(0.0 <= v <= 1.0 for v in call["regions"].values())


def test_the_real_time_pipeline_runs_the_hep2_assay(tmp_path: Path) -> None:
    folder = tmp_path / "fields"
    folder.mkdir()
    for i, p in enumerate(("homogeneous", "centromere")):
        write_rgb(folder / f"f{i}.png", field(p, seed=71_010 + i))
    cfg = with_overrides(CFG, {
        # Each field held 3 s: a field takes about 1 s to score here, several when the
        # machine is busy, and a field left before it settles and is scored is not reported.
        "source.uri": f"replay:{folder}", "source.fps": 20.0, "source.hold_s": 3.0,
        "stability.stable_s": 0.2, "display.sink": "none", "overlay.enabled": False,
        "store.path": str(tmp_path / "r.sqlite"), "optics.um_per_px": 0.5})
    out = io.StringIO()
    counts = runner.run(cfg, stop=threading.Event(), out=out)
    assert counts["fields"] == 2, out.getvalue()
    with ResultStore(cfg.store.path) as s:
        rows = s.recent(5)
    assert [r["result"]["patterns"][0]["icap"] for r in reversed(rows)] == ["AC-1", "AC-3"]


def test_set_assay_switches_the_running_box_to_hep2(tmp_path: Path, broker: Mosquitto) -> None:
    from tests.test_case_service import appliance, config
    from tests.test_mqtt_service import DEVICE, Subscriber, finish

    folder = tmp_path / "fields"
    folder.mkdir()
    for i in range(2):
        write_rgb(folder / f"f{i}.png", field("centromere", seed=71_020 + i))
    cfg = config(tmp_path, folder, mqtt_port=broker.port)
    status = Subscriber(broker.port, f"eyepiece/{DEVICE}/status", client_id="status-watch")
    replies = Subscriber(broker.port, f"eyepiece/{DEVICE}/cmd/+/reply", client_id="replies")
    fields = Subscriber(broker.port, f"eyepiece/{DEVICE}/field", client_id="fields")
    log = tmp_path / "service.log"
    proc = appliance("run", "--config", str(cfg), cwd=tmp_path, background=True, log=log)
    assert isinstance(proc, subprocess.Popen)
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dashboard-cmd")
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        status.wait_for("birth", lambda ms: any(json.loads(m.payload)["status"] == "online"
                                                for m in ms))
        sender.publish(f"eyepiece/{DEVICE}/cmd/set_assay",
                       json.dumps({"assay": "hep2", "request_id": "sw"}), qos=1)
        reply = json.loads(replies.wait_for("the reply", lambda ms: len(ms) >= 1)[0].payload)
        assert reply["ok"] is True, reply
        got = fields.wait_for("a HEp-2 field", lambda ms: any(
            json.loads(m.payload)["result"]["assay"] == "hep2" for m in ms))
        hep2 = next(json.loads(m.payload)["result"] for m in got
                    if json.loads(m.payload)["result"]["assay"] == "hep2")
        VALIDATOR.validate(hep2)
        assert hep2["status"] == "scored" and hep2["patterns"][0]["icap"] == "AC-3"
        # The retained birth now names the assay and model the box runs.
        births = status.wait_for("the new birth", lambda ms: any(
            json.loads(m.payload).get("assay") == "hep2" for m in ms))
        birth = next(json.loads(m.payload) for m in births
                     if json.loads(m.payload).get("assay") == "hep2")
        assert birth["status"] == "online"
        shipped = json.loads((REPO / "models" / "hep2" / "manifest.json").read_text())
        assert [m["name"] for m in birth["models"]] == [shipped["name"]]
    finally:
        sender.loop_stop()
        proc.send_signal(signal.SIGTERM)
        text = finish(proc, log)
        for s in (status, replies, fields):
            s.close()
    assert "assay switched to hep2" in text


def test_intensity_is_calibrated_only_when_the_camera_held_the_pinned_exposure(
        assay: Hep2Assay) -> None:
    pinned = with_overrides(CFG, {"source.exposure_us": 10_000.0, "source.gain": 2.0,
                                  "hep2.intensity.exposure_ms": 10.0,
                                  "hep2.intensity.gain": 2.0})
    image = field("centromere", seed=71_030)
    original = assay.cfg
    try:
        assay.cfg = pinned
        docs = {}
        for said in (None, True, False):
            frame = Frame(image=image, seq=1, timestamp=0.0, source="cam", um_per_px=0.5,
                          exposure_pinned=said)
            docs[said] = hep2_json.result_to_dict(assay.score(frame))
    finally:
        assay.cfg = original
    assert docs[None]["intensity"]["calibrated"] is True  # a still: the config's word
    assert docs[True]["intensity"]["calibrated"] is True
    assert docs[False]["intensity"]["calibrated"] is False
    assert any("did not take the pinned exposure" in w for w in docs[False]["warnings"])
    # A live camera's frames (not a still) also say when its white balance is automatic.
    awb = [any("automatic white balance" in w for w in docs[k]["warnings"])
           for k in (None, True, False)]
    assert awb == [False, True, True]
    fixed = with_overrides(pinned, {"source.auto_white_balance": False})
    try:
        assay.cfg = fixed
        quiet, slipped = (hep2_json.result_to_dict(assay.score(Frame(
            image=image, seq=1, timestamp=0.0, source="cam", um_per_px=0.5,
            exposure_pinned=True, white_balance_held=held))) for held in (True, False))
    finally:
        assay.cfg = original
    assert not any("white balance" in w for w in quiet["warnings"])
    # A camera that did not hold the fixed white balance asked for says so in the result.
    assert any("did not hold the fixed white balance" in w for w in slipped["warnings"])


def test_cells_carry_the_region_heads_reading(assay: Hep2Assay) -> None:
    doc = score(assay, field("centromere", seed=71_004))
    cells = [c for c in doc["cells"] if c["mitosis"] == "interphase"]
    assert len(cells) >= 20 and all(set(c["regions"]) == set(REGIONS) for c in cells)
    shows = {r: np.mean([c["regions"][r] >= 0.5 for c in cells]) for r in REGIONS}
    # Centromere dots are in the nucleoplasm; no cell of this field stains its cytoplasm.
    assert shows["nucleoplasm"] >= 0.9 and shows["cytoplasm"] <= 0.1


def test_the_region_head_is_read_only_where_the_manifest_lists_it() -> None:
    manifest = load_manifest(REPO / "models" / "hep2")
    assert model_heads(manifest) == {"pattern_logits": 17, "mitosis_logits": 3,
                                     "region_logits": 4}
    outputs = dict(manifest.raw["outputs"])
    del outputs["region_logits"]
    older = replace(manifest, raw={**manifest.raw, "outputs": outputs})
    assert "region_logits" not in model_heads(older)  # a v5 model: the rule is skipped
    outputs["region_logits"] = {"classes": ["cytoplasm", "nucleoplasm"]}
    odd = replace(manifest, raw={**manifest.raw, "outputs": outputs})
    with pytest.raises(ModelError, match="region head lists"):
        model_heads(odd)
