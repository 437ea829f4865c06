"""The real-time pipeline end to end: real sources, the real model, a real SQLite store.

Each test runs the threads for a few seconds of paced frames; nothing is timed.
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from appliance.assays.her2.assay import Her2Assay, PreparedField
from appliance.assays.her2.types import FieldResult
from appliance.capture.factory import open_source
from appliance.capture.replay import ReplaySource
from appliance.capture.source import FrameSource
from appliance.capture.synthetic import SyntheticSource
from appliance.capture.v4l2 import V4l2Source
from appliance.config import Config, with_overrides
from appliance.outputs.display.sinks import DisplaySink, open_display
from appliance.outputs.store import ResultStore
from appliance.pipeline.engine import Pipeline
from appliance.service import runner
from appliance.service.recorder import Recorder
from tests.fakes.cv2_capture import FakeCamera
from tests.fakes.picamera2 import CameraRig
from tests.imagefiles import write_rgb
from tools.synth.her2_fields import FieldSpec, generate_field

WAIT_S = 120  # generous: a guard against a hang, never a speed target


def stored(path: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT file, seq, status FROM results ORDER BY id"))


def stored_results(path: Path) -> list[dict[str, Any]]:
    """The stored results' JSON, in the order they were stored."""
    with sqlite3.connect(path) as conn:
        return [json.loads(r) for (r,) in conn.execute(
            "SELECT result_json FROM results ORDER BY id")]


def config(tmp_path: Path, **overrides: Any) -> Config:
    base = {"store.path": str(tmp_path / "results.sqlite"), "overlay.enabled": False,
            "display.sink": "none", "stability.stable_s": 0.3, "source.fps": 20.0,
            "source.hold_s": 1.5, "pipeline.drain_timeout_s": 60.0}
    return with_overrides(Config(), {**base, **overrides})


@pytest.fixture(scope="module")
def assay() -> Her2Assay:
    return Her2Assay.from_config(Config())


def run_pipeline(cfg: Config, assay: Any, source: Callable[[], FrameSource], *,
                 stop: threading.Event | None = None,
                 until: Callable[[Pipeline], bool] | None = None) -> Pipeline:
    """Run until the source ends (or ``until`` holds, then stop); return the pipeline."""
    stop = stop or threading.Event()
    display = None if cfg.display.sink == "none" else (lambda: open_display(cfg.display))
    with ResultStore(cfg.store.path) as store:
        recorder = Recorder(store=store, config_sha256=cfg.sha256(), overlay_dir=None,
                            out=io.StringIO())
        pipeline = Pipeline(cfg, assay=assay, open_source=source, recorder=recorder,
                            display=display, stop=stop)
        pipeline.start()
        for _ in range(int(WAIT_S / 0.1)):
            if pipeline.wait(timeout=0.1) or (until is not None and until(pipeline)):
                break
        assert pipeline.stop(), "pipeline threads did not end"
    assert pipeline.fatal is None, pipeline.fatal
    return pipeline


@pytest.fixture(scope="module")
def field_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fields")
    for i, score in enumerate(("3+", "0", "2+")):
        write_rgb(folder / f"f{i}.png",
                  generate_field(FieldSpec(seed=990_100 + i, target_score=score)).image)
    (folder / "f3.png").write_bytes(b"\x89PNG truncated")
    return folder


@pytest.mark.parametrize("model_thread", ["yes", "no"])
def test_replay_reports_each_held_field_once_and_shows_every_frame(
        tmp_path: Path, assay: Her2Assay, field_folder: Path, model_thread: str) -> None:
    cfg = config(tmp_path, **{"source.uri": f"replay:{field_folder}", "display.sink": "file",
                              "display.path": str(tmp_path / "live.png"),
                              "display.file_interval_s": 0.0,
                              "pipeline.model_thread": model_thread})
    pipeline = run_pipeline(cfg, assay, lambda: open_source(cfg.source, cfg.input))
    assert pipeline.model_thread is (model_thread == "yes")
    rows = stored(tmp_path / "results.sqlite")
    assert sorted(Path(f).name for f, _, _ in rows) == ["f0.png", "f1.png", "f2.png", "f3.png"]
    assert dict((Path(f).name, s) for f, _, s in rows)["f3.png"] == "not_scorable"
    snap = pipeline.snapshot()
    assert snap.fields_reported == 3  # the corrupt file is reported as a rejection
    assert snap.frames_rejected == 1
    # A view is reported no sooner than it has been still for stability.stable_s (0.3 s).
    to_report = snap.view_to_report_ms
    assert to_report["p50"] is not None and to_report["p95"] is not None
    assert 300.0 <= to_report["p50"] <= to_report["p95"]
    # Each still is delivered 30 times (1.5 s at 20 fps); far fewer are analysed than shown.
    assert snap.frames_captured == 3 * 30
    # Once a still view is reported, its later frames are not analysed again: the next
    # view does not wait behind them.
    assert snap.frames_dropped.get("settled", 0) > 0
    live = cv2.imread(str(tmp_path / "live.png"))
    assert live is not None and live.shape[0] >= 480


def test_a_return_to_a_field_is_not_reported_again(tmp_path: Path, assay: Her2Assay) -> None:
    cfg = config(tmp_path, **{"source.uri": "synthetic:11"})
    source = SyntheticSource(11, width=640, height=480, fps=20, hold_s=1.5, fields=3,
                             move_s=0.4)
    holds = [step.field for step in source.plan if step.phase == "hold"]
    assert len(holds) == 4 and holds[3] in holds[:3]  # 0, 1, 2, then a revisit
    pipeline = run_pipeline(cfg, assay, lambda: source)
    rows = stored(tmp_path / "results.sqlite")
    scored_first = {Path(f).name for f, _, s in rows if s == "scored"}
    assert pipeline.snapshot().fields_reported == len(rows)
    # Three fields, three reports: the revisit is recognised. (A revisit may be reported only
    # when the first look could not be scored and this one can.)
    assert len(rows) == 3 or (len(rows) == 4 and rows[3][2] == "scored" and not scored_first)


class _StopsDuringAnalysis:
    """The real assay; asks the pipeline to stop while a still field is being measured."""

    def __init__(self, assay: Her2Assay, stop: threading.Event, from_seq: int) -> None:
        self._assay, self._stop, self._from_seq = assay, stop, from_seq
        self.stopped_at: int | None = None

    def finish(self, prepared: PreparedField, logits: np.ndarray) -> FieldResult:
        if prepared.base.seq >= self._from_seq and self.stopped_at is None:
            self.stopped_at = prepared.base.seq
            self._stop.set()  # SIGTERM arrives now, with this field in flight
        return self._assay.finish(prepared, logits)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._assay, name)


class _VirtualClock:
    """Frame times that advance exactly one frame interval per frame, however busy the CPU.

    Each wait also sleeps a little real time, so the 10 s hold of the first field lasts
    4 s of real time: the stop comes while that field is still in view.
    """

    def __init__(self) -> None:
        self.now = time.monotonic() - 1000.0  # in the past: latencies stay positive

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        time.sleep(seconds * 0.4)


def test_a_stop_during_analysis_still_stores_the_field_in_flight(
        tmp_path: Path, assay: Her2Assay, field_folder: Path) -> None:
    # The first field is held still from frame 1; at 20 fps it is stable from frame 21 on
    # (1.0 s later; 0.975 keeps float rounding of the frame times off the boundary).
    cfg = config(tmp_path, **{"source.uri": f"replay:{field_folder}",
                              "stability.stable_s": 0.975})
    clock = _VirtualClock()
    stop = threading.Event()
    proxy = _StopsDuringAnalysis(assay, stop, from_seq=21)

    def source() -> FrameSource:
        return ReplaySource(field_folder, input_cfg=cfg.input, fps=20.0, hold_s=10.0,
                            clock=clock, sleep=clock.sleep)

    pipeline = run_pipeline(cfg, proxy, source, stop=stop)
    rows = stored(tmp_path / "results.sqlite")
    assert proxy.stopped_at is not None
    # The first stable frame analysed was in flight when the stop came: it is stored.
    assert [(Path(f).name, seq) for f, seq, _ in rows] == [("f0.png", proxy.stopped_at)]
    assert pipeline.recorder.counts["fields"] == 1


class _Paced:
    """A camera source read at 20 fps, as a real device blocks until its next frame."""

    def __init__(self, source: FrameSource) -> None:
        self._source = source
        self.source_id = source.source_id

    def open(self) -> None:
        self._source.open()

    def read(self) -> Any:
        time.sleep(0.05)
        return self._source.read()

    def close(self) -> None:
        self._source.close()


def test_a_camera_that_fails_mid_stream_recovers_and_the_pipeline_goes_on(
        tmp_path: Path, assay: Her2Assay) -> None:
    field = generate_field(FieldSpec(seed=990_200, target_score="2+")).image
    bgr = cv2.cvtColor(field, cv2.COLOR_RGB2BGR)
    camera = FakeCamera(size=(field.shape[1], field.shape[0]))
    camera.script(*([bgr] * 5), cv2.error("select() timeout"), None, *([bgr] * 80))
    cfg = config(tmp_path, **{"source.uri": "v4l2:/dev/video0", "source.reconnect_min_s": 0.05,
                              "source.reconnect_max_s": 0.1})
    opened = 0

    def source() -> FrameSource:
        nonlocal opened
        opened += 1
        if opened == 2:
            camera.fail_opens(2)  # unplugged: the first two reopening attempts fail
        return _Paced(V4l2Source("/dev/video0", capture_factory=camera.capture))

    def seen_enough(p: Pipeline) -> bool:
        return p.snapshot().frames_captured >= 60 and p.snapshot().fields_reported >= 1

    pipeline = run_pipeline(cfg, assay, source, until=seen_enough)
    snap = pipeline.snapshot()
    assert snap.source_reconnects >= 1
    assert snap.frames_captured >= 60  # frames resumed after the fault
    assert snap.source_state in ("streaming", "closed")
    assert len(stored(tmp_path / "results.sqlite")) == 1  # the still field, reported once


def test_the_pi_preview_overlay_is_drawn_on_the_open_camera(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`appliance run` with picamera2 source and sink: DRM preview, RGBA annotations over it."""
    field = generate_field(FieldSpec(seed=990_300, target_score="3+")).image
    rig = CameraRig(field)
    monkeypatch.setitem(sys.modules, "picamera2", rig.module())
    cfg = config(tmp_path, **{"source.uri": "picamera2:0", "display.sink": "picamera2"})
    stop = threading.Event()

    def stop_when_drawn() -> None:
        for _ in range(int(WAIT_S / 0.1)):
            if rig.made and len(rig.made[-1].overlays) >= 2:
                break
            time.sleep(0.1)
        stop.set()

    watcher = threading.Thread(target=stop_when_drawn)
    watcher.start()
    runner.run(cfg, stop=stop, out=io.StringIO())
    watcher.join()
    camera = rig.made[-1]
    assert camera.preview is not None and camera.preview.name == "DRM"
    overlay = camera.overlays[-1]
    assert overlay.shape[2] == 4 and overlay.dtype == np.uint8
    alpha = overlay[:, :, 3]
    assert 0 < np.count_nonzero(alpha) < alpha.size  # annotations, transparent elsewhere


class _BrokenScreen:
    """A display whose every picture fails, as an unplugged HDMI output might."""

    size = None
    annotations_only = False
    wants_quit = False

    def show(self, picture: np.ndarray) -> None:
        raise OSError("HDMI output gone")

    def close(self) -> None:
        pass


def test_a_failing_display_never_stops_the_scoring(
        tmp_path: Path, assay: Her2Assay, field_folder: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path, **{"source.uri": f"replay:{field_folder}"})
    with ResultStore(cfg.store.path) as store:
        recorder = Recorder(store=store, config_sha256=cfg.sha256(), overlay_dir=None,
                            out=io.StringIO())
        broken: Callable[[], DisplaySink] = _BrokenScreen  # type: ignore[assignment]
        pipeline = Pipeline(cfg, assay=assay, recorder=recorder, display=broken,
                            open_source=lambda: open_source(cfg.source, cfg.input),
                            stop=threading.Event())
        pipeline.start()
        assert pipeline.wait(timeout=WAIT_S)
    assert pipeline.fatal is None
    assert len(stored(tmp_path / "results.sqlite")) == 4
    assert pipeline.snapshot().frames_dropped.get("display_error", 0) > 1
    assert sum("HDMI output gone" in r.getMessage() for r in caplog.records) == 1  # once


def test_a_held_view_refused_before_its_scale_is_known_stays_refused_for_its_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A brightfield slide under the HEp-2 assay is refused as the wrong stain before any
    scale is estimated. Before, the pipeline kept that refusal's empty scale for the still
    view, and every later frame of the view failed as an internal error."""
    from appliance.assays.hep2.assay import Hep2Assay

    folder = tmp_path / "fields"
    folder.mkdir()
    write_rgb(folder / "brightfield.png",
              generate_field(FieldSpec(seed=990_100, target_score="3+")).image)
    cfg = config(tmp_path, **{"source.uri": f"replay:{folder}", "assay": "hep2"})
    with Hep2Assay.from_config(cfg) as hep2:
        pipeline = run_pipeline(cfg, hep2, lambda: open_source(cfg.source, cfg.input))
    assert pipeline.snapshot().frames_analysed > 1  # the view was analysed again
    assert pipeline.latest_reason_code() == "wrong_stain"
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert [s for _, _, s in stored(tmp_path / "results.sqlite")] == ["not_scorable"]


def test_an_objective_set_on_a_decided_view_reads_it_again_at_the_new_scale(
        tmp_path: Path) -> None:
    """``set_objective`` replaces the assay's config while a view is held. The decided
    view is read again (its config changed), and at the objective's scale. Two faults
    this found: the scale estimated earlier in the same still view was handed back and
    won; and a frame prepared before the change but finished after it marked the view
    decided under the new config, so it was never read again (about every other run)."""
    folder = tmp_path / "fields"
    folder.mkdir()
    write_rgb(folder / "f.png", generate_field(FieldSpec(seed=990_100, target_score="3+")).image)
    cfg = config(tmp_path, **{"source.uri": f"replay:{folder}", "source.hold_s": 30.0})
    calls: list[tuple[bool, Any]] = []  # (prepared under the set objective, scale handed in)
    with Her2Assay.from_config(cfg) as her2:
        estimated_cfg = her2.cfg
        prepare = her2.prepare

        def recording(frame: Any, scale: Any = None) -> Any:
            calls.append((her2.cfg is not estimated_cfg, scale))
            return prepare(frame, scale)

        her2.prepare = recording  # type: ignore[method-assign]

        def until(p: Pipeline) -> bool:
            # Once the view's frames are passed over as decided, set the objective as the
            # command does. Only a frame already in analysis can be prepared before the
            # change; every later prepare call is one the change caused.
            if her2.cfg is estimated_cfg and p.snapshot().frames_dropped.get("settled"):
                her2.cfg = with_overrides(her2.cfg, {"optics.objective": "20x"})  # the command
            return any(after for after, _ in calls)

        run_pipeline(cfg, her2, lambda: open_source(cfg.source, cfg.input), until=until)
    before = [scale for after, scale in calls if not after]
    after = [scale for after, scale in calls if after]
    assert before[0] is None  # the view's first frame: its scale is estimated
    assert after, "the decided view was not read again after set_objective"
    assert after[0] is None  # not the estimate: prepare takes the objective from the config


def test_a_view_read_again_under_a_new_objective_is_reported_as_superseding(
        tmp_path: Path) -> None:
    """The store and the dashboard must hold what the screen shows: a reported view read
    again after ``set_objective`` is reported once more, naming the report it replaces,
    and a reload that changes nothing the reading uses reports nothing."""
    folder = tmp_path / "fields"
    folder.mkdir()
    write_rgb(folder / "f.png", generate_field(FieldSpec(seed=990_100, target_score="3+")).image)
    cfg = config(tmp_path, **{"source.uri": f"replay:{folder}", "source.hold_s": 30.0})
    changes: list[tuple[str, int]] = []  # (what, frames analysed when it changed)
    with Her2Assay.from_config(cfg) as her2:
        def until(p: Pipeline) -> bool:
            snap = p.snapshot()
            if not changes and snap.fields_reported == 1 and snap.frames_dropped.get("settled"):
                # A change to a section HER2 does not read: the view is read again (the
                # config changed) but it is the same reading.
                her2.cfg = with_overrides(her2.cfg, {"hep2.specimen.mixed_share": 0.3})
                changes.append(("hep2", snap.frames_analysed))
            elif (len(changes) == 1 and snap.frames_analysed > changes[0][1] + 1
                  and snap.fields_reported == 1):
                # At least one frame was analysed wholly under the changed config.
                her2.cfg = with_overrides(her2.cfg, {"optics.objective": "20x"})  # the command
                changes.append(("objective", snap.frames_analysed))
            return snap.fields_reported >= 2

        pipeline = run_pipeline(cfg, her2, lambda: open_source(cfg.source, cfg.input),
                                until=until)
    assert [what for what, _ in changes] == ["hep2", "objective"]
    assert pipeline.snapshot().fields_reported == 2
    with sqlite3.connect(cfg.store.path) as conn:
        stored = conn.execute("SELECT result_json, config_sha256 FROM results ORDER BY id")
        rows, shas = zip(*[(json.loads(r), sha) for r, sha in stored], strict=True)
    # Each is stored beside the config it was read under, not the one the box started on.
    assert shas == (cfg.sha256(), her2.cfg.sha256())
    first, second = rows
    assert first["supersedes"] is None and first["um_per_px_source"] == "estimated"
    assert second["um_per_px_source"] == "objective"
    assert second["supersedes"] == {"file": first["file"], "seq": first["seq"],
                                    "reason": "settings_changed"}


def test_a_flat_field_made_again_under_its_name_reads_the_held_view_again(
        tmp_path: Path) -> None:
    """A lab remakes the flat field in place and reloads the same config: nothing in the
    config changed, yet the brightness of the view in front of the camera did. The view is
    read again with the new flat and reported as superseding the first reading. Before,
    the view stayed decided (the config was the same object) and the store kept the
    reading made with the old flat until the next view."""
    from appliance.assays.hep2 import flat_field as ff
    from appliance.assays.hep2.assay import Hep2Assay
    from appliance.service.reload import reload_config
    from tools.synth import camera_looks
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    def write_flat(corner: float) -> str:
        rng = np.random.default_rng(7)
        frames = [camera_looks.vignetting(camera_looks.uniform_slide(300, 400, rng, 170.0),
                                          corner) for _ in range(3)]
        return ff.save_flat(ff.flat_from_frames(frames), flat_path)

    folder = tmp_path / "fields"
    folder.mkdir()
    write_rgb(folder / "f.png", generate_hep2_field(Hep2FieldSpec(
        seed=996_810, width=400, height=300, um_per_px=0.5, patterns=(("homogeneous", 1.0),),
        intensity=120.0, defocus_um=0.0)).image)
    flat_path = tmp_path / "flat.json"
    first_flat = write_flat(0.5)
    cfg_path = tmp_path / "eyepiece.toml"
    cfg_path.write_text(f'assay = "hep2"\n[optics]\num_per_px = 0.5\n'
                        f'[hep2.intensity]\nflat_field_file = "{flat_path}"\n', encoding="utf-8")
    cfg = with_overrides(config(tmp_path, **{"source.uri": f"replay:{folder}",
                                             "source.hold_s": 60.0}),
                         {"assay": "hep2", "optics.um_per_px": 0.5,
                          "hep2.intensity.flat_field_file": str(flat_path)})
    reloads: list[tuple[tuple[str, ...], int]] = []  # (applied, frames analysed then)
    with Hep2Assay.from_config(cfg) as hep2:
        assert hep2.flat_sha256 == first_flat
        before = hep2.cfg

        def until(p: Pipeline) -> bool:
            snap = p.snapshot()
            if not reloads and snap.fields_reported == 1 and snap.frames_dropped.get("settled"):
                # A reload of the same file, the flat unchanged: the same reading.
                reloads.append((reload_config(hep2, cfg_path).applied, snap.frames_analysed))
            elif (len(reloads) == 1 and snap.frames_dropped.get("settled", 0) > 2
                  and snap.fields_reported == 1):
                write_flat(0.8)  # made again in place, then the reload
                reloads.append((reload_config(hep2, cfg_path).applied, snap.frames_analysed))
            return snap.fields_reported >= 2

        pipeline = run_pipeline(cfg, hep2, lambda: open_source(cfg.source, cfg.input),
                                until=until)
        assert hep2.cfg is before  # no setting changed: the running config object stayed
    assert [applied for applied, _ in reloads] == [(), ("hep2.intensity.flat_field_file",)]
    assert pipeline.snapshot().fields_reported == 2
    first, second = stored_results(cfg.store.path)
    assert first["status"] == second["status"] == "scored"
    assert second["supersedes"] == {"file": first["file"], "seq": first["seq"],
                                    "reason": "settings_changed"}
    # Less light fall-off at the corners in the new flat: the corrected brightness moved.
    assert first["intensity"]["value"] != second["intensity"]["value"]


def run_hep2_replay(tmp_path: Path, folder: Path, hold_s: float) -> tuple[Config, Pipeline]:
    """Replay ``folder`` through the HEp-2 assay at a declared 0.5 um/px, each file held
    ``hold_s``: (the config, the pipeline once the source has ended)."""
    from appliance.assays.hep2.assay import Hep2Assay

    cfg = with_overrides(config(tmp_path, **{"source.uri": f"replay:{folder}",
                                             "source.hold_s": hold_s}),
                         {"assay": "hep2", "optics.um_per_px": 0.5})
    with Hep2Assay.from_config(cfg) as hep2:
        return cfg, run_pipeline(cfg, hep2, lambda: open_source(cfg.source, cfg.input))


def fine_speckled_field(defocus_um: float) -> np.ndarray:
    """A 640x480 HEp-2 fine speckled field at 20x, ``defocus_um`` out of focus: 0.75 um
    passes the assay's focus gate and the tracker's, and reads 1.18 on the tracker's
    focus figure against 1.93 sharp."""
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    return generate_hep2_field(Hep2FieldSpec(
        seed=996_820, width=640, height=480, um_per_px=0.5,
        patterns=(("fine_speckled", 1.0),), intensity=100.0, defocus_um=defocus_um)).image


def test_a_field_focused_better_after_its_report_is_reported_again_as_sharper(
        tmp_path: Path) -> None:
    """The user stops on a field 0.75 um out of focus (sharp enough for the box to report
    it, not for the speckles), then focuses: the sharper reading replaces the soft one in
    the store. Before, the sharper view was a return to a reported field and the store
    kept the soft reading."""
    folder = tmp_path / "fields"
    folder.mkdir()
    for name, defocus in (("a_soft.png", 0.75), ("b_sharp.png", 0.0)):
        write_rgb(folder / name, fine_speckled_field(defocus))
    cfg, pipeline = run_hep2_replay(tmp_path, folder, hold_s=4.0)
    assert pipeline.snapshot().fields_reported == 2
    soft, sharp = stored_results(cfg.store.path)
    assert soft["file"].endswith("a_soft.png") and sharp["file"].endswith("b_sharp.png")
    assert soft["status"] == sharp["status"] == "scored"
    assert soft["supersedes"] is None
    assert sharp["supersedes"] == {"file": soft["file"], "seq": soft["seq"],
                                   "reason": "sharper"}
    assert sharp["sharpness"] > soft["sharpness"]


def test_a_view_held_softer_than_it_was_a_moment_before_is_reported_with_a_warning(
        tmp_path: Path) -> None:
    """The user turns the knob through the best focus and stops 0.75 um past it: the box
    reports the view it was held on, and says it was sharper just before."""
    folder = tmp_path / "fields"
    folder.mkdir()
    # Passed through for less than stable_s.
    write_rgb(folder / "a0_sharp.png", fine_speckled_field(0.0))
    soft = fine_speckled_field(0.75)
    for i in range(1, 9):  # then held: the same picture file after file, 2 s in all
        write_rgb(folder / f"a{i}_soft.png", soft)
    cfg, pipeline = run_hep2_replay(tmp_path, folder, hold_s=0.25)
    assert pipeline.snapshot().fields_reported == 1
    (row,) = stored_results(cfg.store.path)
    assert "_soft.png" in row["file"] and row["status"] == "scored"
    assert any(w.startswith("this view was sharper") for w in row["warnings"]), row["warnings"]
