"""The live display, checked by its pixels: composed pictures, a real pygame screen, files,
and the picamera2 overlay through a fake that checks what picamera2 checks."""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.assays.her2.assay import Her2Assay
from appliance.assays.her2.types import FieldResult, ModelRef
from appliance.capture.frame import Frame
from appliance.config import Config, DisplayConfig
from appliance.outputs.display import (
    DisplayError,
    FileSink,
    LiveComposer,
    LiveStatus,
    NullSink,
    compose_annotations,
    compose_live,
    open_display,
    show_live,
)
from appliance.outputs.display.live import (
    NO_PICTURE_BG,
    PANEL_ALPHA,
    LiveCase,
    live_layout,
    panel_rows,
    stage_line,
)
from appliance.outputs.display.picamera2_overlay import Picamera2OverlaySink
from appliance.outputs.overlay import ALERT_COLOUR, CLASS_COLOURS, TEXT_COLOUR
from tests.fakes.picamera2_preview import FakePicamera2
from tools.synth.her2_fields import FieldSpec, generate_field

SCREEN = (1280, 720)
CLINICAL = ModelRef(name="her2-seg", sha256="ab" * 32, precision="int8",
                    validated_on="412 annotated fields from 3 hospitals")


@pytest.fixture(scope="module")
def field() -> tuple[np.ndarray, FieldResult]:
    """A generated 3+ field and the real assay's result on it."""
    spec = FieldSpec(seed=991_000, width=800, height=600, um_per_px=0.5, target_score="3+")
    image = generate_field(spec).image
    with Her2Assay.from_config(Config()) as assay:
        result = assay.score(Frame(image=image, seq=1, timestamp=0.0, source="test",
                                   um_per_px=0.5))
    assert result.scored and len(result.cells) > 50, result.reason
    return image, replace(result, warnings=())


def status(**kw: object) -> LiveStatus:
    base = LiveStatus(source_state="streaming", source_reason="", stage="stable",
                      reported=False, result_in_view=True, capture_fps=29.7,
                      processed_fps=4.2, latency_ms=183.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def count_near(pixels: np.ndarray, colour: tuple[int, ...], tol: int = 30) -> int:
    diff = np.abs(pixels.astype(np.int16) - np.asarray(colour, dtype=np.int16))
    return int(np.all(diff <= tol, axis=-1).sum())


def count(pixels: np.ndarray, colour: tuple[int, ...]) -> int:
    return int(np.all(pixels == np.asarray(colour, dtype=np.uint8), axis=-1).sum())


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"{path} does not decode"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def crop(picture: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = rect
    return picture[y:y + h, x:x + w]


def plain_frame(image: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """The frame as the display scales it, with nothing drawn on it."""
    return cv2.resize(image, (rect[2], rect[3]), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------- compose_live


def test_outlines_in_class_colours_over_a_still_field_in_view(
        field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    out = LiveComposer().compose(image, result, status(), size=SCREEN)
    assert out.shape == (720, 1280, 3) and out.dtype == np.uint8
    rect = live_layout((800, 600), SCREEN).frame
    shown, plain = crop(out, rect), plain_frame(image, rect)
    classes = {c.membrane_class for c in result.cells}
    for cls in classes:
        colour = CLASS_COLOURS[cls]
        assert count(shown, colour) > count(plain, colour) + 20, cls
    # A scaled outline point of each cell carries its class colour (or, where outlines
    # of neighbours meet, another class's).
    fx = rect[2] / result.image_width
    fy = rect[3] / result.image_height
    palette = {CLASS_COLOURS[c] for c in classes}
    hits = sum(tuple(shown[round(y * fy), round(x * fx)]) in palette
               for c in result.cells for x, y in c.outline[:1])
    assert hits > 0.8 * len(result.cells)


@pytest.mark.parametrize("change", [
    {"stage": "moving"}, {"stage": "settling"}, {"stage": "blurred"},
    {"result_in_view": False}, {"result_in_view": False, "reported": True},
])
def test_no_outlines_unless_still_and_in_view(field: tuple[np.ndarray, FieldResult],
                                              change: dict[str, object]) -> None:
    image, result = field
    out = LiveComposer().compose(image, result, status(**change), size=SCREEN)
    rect = live_layout((800, 600), SCREEN).frame
    # The frame is the camera picture, untouched: not one outline pixel over it.
    assert np.array_equal(crop(out, rect), plain_frame(image, rect))


def test_show_cells_off_draws_no_outlines(field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    out = LiveComposer().compose(image, result, status(), size=SCREEN, show_cells=False)
    rect = live_layout((800, 600), SCREEN).frame
    assert np.array_equal(crop(out, rect), plain_frame(image, rect))


def test_panel_shows_text_and_the_result_only_in_view(
        field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    composer = LiveComposer()
    layout = live_layout((800, 600), SCREEN)
    in_view = crop(composer.compose(image, result, status(), size=SCREEN), layout.panel)
    away = crop(composer.compose(image, result, status(result_in_view=False), size=SCREEN),
                layout.panel)
    assert count_near(in_view, TEXT_COLOUR) > 300
    # The score, cell count and legend add bright text and the class swatches.
    assert count_near(in_view, TEXT_COLOUR) > count_near(away, TEXT_COLOUR) + 200
    swatch = CLASS_COLOURS[result.cells[0].membrane_class]
    assert count(in_view, swatch) > 50 and count(away, swatch) == 0


def test_research_use_line_follows_the_model(field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    composer = LiveComposer()
    panel = live_layout((800, 600), SCREEN).panel
    generated = crop(composer.compose(image, result, status(), size=SCREEN), panel)
    clinical = crop(composer.compose(image, replace(result, model=CLINICAL), status(),
                                     size=SCREEN), panel)
    # Alert orange is used for the research-use line, warnings and faults: only the first
    # applies here.
    assert count_near(generated, ALERT_COLOUR, 10) > 100
    assert count_near(clinical, ALERT_COLOUR, 10) == 0


def test_rates_redraw_only_the_rates_block(field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    composer = LiveComposer()
    a = composer.compose(image, result, status(capture_fps=29.7, latency_ms=183.0),
                         size=SCREEN)
    b = composer.compose(image, result, status(capture_fps=12.3, latency_ms=None),
                         size=SCREEN)
    rows = np.nonzero(np.any(a != b, axis=(1, 2)))[0]
    cols = np.nonzero(np.any(a != b, axis=(0, 2)))[0]
    panel = live_layout((800, 600), SCREEN).panel
    assert rows.size > 0
    assert rows.min() > 0.75 * SCREEN[1]  # the bottom lines of the panel
    assert cols.min() >= panel[0]


def test_stage_words() -> None:
    assert stage_line(status(stage="moving"))[0] == "Moving stage"
    assert stage_line(status(stage="settling"))[0] == "Hold still..."
    assert stage_line(status(stage="stable"))[0] == "Scoring"
    assert stage_line(status(stage="stable", reported=True))[::2] == ("Reported", True)
    assert stage_line(status(stage="blurred")) == ("Out of focus", ALERT_COLOUR, False)
    assert stage_line(status(source_state="fault", source_reason="x"))[0] == "No picture"


def test_reported_draws_a_tick(field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    composer = LiveComposer()
    panel = live_layout((800, 600), SCREEN).panel
    scoring = crop(composer.compose(image, result, status(), size=SCREEN), panel)
    reported = crop(composer.compose(image, result, status(reported=True), size=SCREEN),
                    panel)
    x0 = panel[2] // 2  # right half of the top line: only the tick is there
    assert count_near(reported[:60, x0:], (110, 220, 140), 20) > 30
    assert count_near(scoring[:60, x0:], (110, 220, 140), 20) == 0


@pytest.mark.parametrize("state", ["fault", "opening", "ended", "closed"])
def test_no_picture_screen(field: tuple[np.ndarray, FieldResult], state: str) -> None:
    image, result = field
    st = status(source_state=state, source_reason="camera unplugged", result_in_view=True)
    out = LiveComposer().compose(image, result, st, size=SCREEN)
    area = crop(out, live_layout((800, 600), SCREEN).area)
    assert count(area, NO_PICTURE_BG) > 0.85 * area.shape[0] * area.shape[1]
    assert count_near(area, ALERT_COLOUR) > 500  # the message, in large letters
    assert not any(count(area, c) for c in CLASS_COLOURS.values())


def test_no_frame_yet_is_no_picture(field: tuple[np.ndarray, FieldResult]) -> None:
    _, result = field
    out = compose_live(None, result, status(), size=(640, 360))
    area = crop(out, live_layout(None, (640, 360)).area)
    assert out.shape == (360, 640, 3)
    assert count(area, NO_PICTURE_BG) > 0.8 * area.shape[0] * area.shape[1]


def test_size_none_keeps_the_frame_and_adds_the_panel(
        field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    out = compose_live(image, result, status(stage="moving"), size=None)
    assert out.shape[0] == 600 and out.shape[1] > 800
    assert np.array_equal(out[:, :800], image)  # not resampled


def test_portrait_screen_puts_the_panel_below(field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    out = compose_live(image, result, status(), size=(480, 800))
    layout = live_layout((800, 600), (480, 800))
    assert not layout.side and layout.panel[1] > 0 and layout.frame[2] == 480
    assert count_near(crop(out, layout.panel), TEXT_COLOUR) > 200


def test_bad_input_is_refused(field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    with pytest.raises(ValueError, match="uint8 RGB"):
        compose_live(image.astype(np.float32), result, status(), size=SCREEN)
    with pytest.raises(ValueError, match="minimum"):
        compose_live(image, result, status(), size=(10, 10))
    with pytest.raises(ValueError, match="stage 'parked'"):
        status(stage="parked")
    with pytest.raises(ValueError, match="source_state"):
        status(source_state="broken")
    with pytest.raises(ValueError, match="capture_fps"):
        status(capture_fps=float("nan"))


# ---------------------------------------------------------------- annotations, picamera2


def test_annotations_are_transparent_but_outlines_and_panel(
        field: tuple[np.ndarray, FieldResult]) -> None:
    _, result = field
    rgba = compose_annotations(result, status(), size=(800, 600))
    assert rgba.shape == (600, 800, 4) and rgba.dtype == np.uint8
    layout = live_layout(None, (800, 600), over_picture=True)
    px = layout.panel[0]
    picture, alpha = rgba[:, :px, :3], rgba[:, :px, 3]
    assert 0.5 < np.mean(alpha == 0) < 0.995  # mostly clear, with outlines
    assert set(np.unique(alpha)) == {0, 255}
    opaque = picture[alpha == 255]
    palette = np.array([CLASS_COLOURS[c.membrane_class] for c in result.cells])
    assert all((palette == p).all(axis=1).any() for p in opaque[::50])
    assert np.all(rgba[:, px:, 3] == PANEL_ALPHA)
    moving = compose_annotations(result, status(stage="moving"), size=(800, 600))
    assert np.all(moving[:, :px, 3] == 0)  # nothing over a field in motion


def test_picamera2_sink_sends_rgba_to_the_preview(
        field: tuple[np.ndarray, FieldResult]) -> None:
    _, result = field
    camera = FakePicamera2()
    clock = [0.0]
    sink = Picamera2OverlaySink(camera, min_interval_s=0.2, clock=lambda: clock[0])
    composer = LiveComposer()
    frame = np.zeros((600, 800, 3), np.uint8)
    show_live(sink, composer, frame, result, status())
    assert len(camera.overlays) == 1
    sent = camera.current
    assert sent is not None and sent.shape == (600, 800, 4)
    assert np.array_equal(sent, composer.annotations(result, status(), size=(800, 600)))
    # Only the rates changed, soon after: held back. Outlines gone: sent at once.
    clock[0] = 0.05
    show_live(sink, composer, frame, result, status(capture_fps=3.0))
    assert len(camera.overlays) == 1
    show_live(sink, composer, frame, result, status(stage="moving"))
    assert len(camera.overlays) == 2
    current = camera.current
    px = live_layout(None, (800, 600), over_picture=True).panel[0]
    assert current is not None and np.all(current[:, :px, 3] == 0)
    sink.close()
    sink.close()
    assert camera.overlays[-1] is None and len(camera.overlays) == 3


def test_picamera2_sink_counts_preview_errors(field: tuple[np.ndarray, FieldResult],
                                             caplog: pytest.LogCaptureFixture) -> None:
    _, result = field
    camera = FakePicamera2(started=False)
    sink = Picamera2OverlaySink(camera)
    rgba = compose_annotations(result, status(), size=(320, 240))
    with caplog.at_level(logging.WARNING):
        sink.show(rgba)
        sink.show(rgba)
    assert sink.errors.counts == {"RuntimeError": 2} and camera.overlays == []
    assert sum("set_overlay failed" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="RGBA"):
        sink.show(rgba[..., :3].copy())


def test_fake_picamera2_checks_like_the_real_one() -> None:
    camera = FakePicamera2()
    with pytest.raises(RuntimeError, match="4-channel"):
        camera.set_overlay(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        camera.set_overlay(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match="buffer_count"):
        FakePicamera2(buffer_count=1).set_overlay(np.zeros((4, 4, 4), np.uint8))
    overlay = np.full((4, 4, 4), 7, np.uint8)
    camera.set_overlay(overlay)
    overlay[:] = 0  # the preview copied it
    current = camera.current
    assert current is not None and int(current.max()) == 7


# ---------------------------------------------------------------- pygame


@pytest.fixture()
def pygame_module() -> object:
    return pytest.importorskip("pygame")


def test_pygame_offscreen_screen_shows_the_exact_picture(
        pygame_module: object, field: tuple[np.ndarray, FieldResult]) -> None:
    import pygame

    from appliance.outputs.display.pygame_sink import PygameSink

    image, result = field
    before = os.environ.get("SDL_VIDEODRIVER")
    with PygameSink("offscreen", (640, 360)) as sink:
        assert os.environ["SDL_VIDEODRIVER"] == "offscreen"
        assert sink.size == (640, 360)
        picture = compose_live(image, result, status(), size=sink.size)
        sink.show(picture)
        shot = pygame.surfarray.array3d(pygame.display.get_surface()).transpose(1, 0, 2)
        assert np.array_equal(shot, picture)
        # A picture of another size is letterboxed onto the screen.
        sink.show(np.full((100, 100, 3), 200, np.uint8))
        shot = pygame.surfarray.array3d(pygame.display.get_surface()).transpose(1, 0, 2)
        assert shot.shape == (360, 640, 3)
        assert np.all(shot[:, 320] == 200) and np.all(shot[:, 0] == 0)
        assert not sink.wants_quit
        pygame.event.post(pygame.event.Event(pygame.QUIT))
        sink.show(picture)
        assert sink.wants_quit
    assert os.environ.get("SDL_VIDEODRIVER") == before
    assert not pygame.display.get_init()


def test_pygame_calls_from_another_thread_are_refused(pygame_module: object) -> None:
    from appliance.outputs.display.pygame_sink import PygameSink

    sink = PygameSink("offscreen", (160, 120))
    errors: list[BaseException] = []

    def other() -> None:
        try:
            sink.show(np.zeros((120, 160, 3), np.uint8))
        except DisplayError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    sink.close()
    assert len(errors) == 1 and "thread" in str(errors[0])


# ---------------------------------------------------------------- file sink


@pytest.fixture()
def picture(field: tuple[np.ndarray, FieldResult]) -> np.ndarray:
    image, result = field
    return compose_live(image, result, status(), size=(320, 180))


def test_file_sink_writes_atomically(tmp_path: Path, picture: np.ndarray,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "latest.png"
    sink = FileSink(target, 0.0)
    sink.show(np.zeros_like(picture))
    seen: list[tuple[str, bool]] = []
    real_replace = os.replace

    def watching_replace(src: str, dst: str) -> None:
        # At the moment of the rename the old picture is still whole at the target and
        # the new one is whole beside it, in the same folder.
        old = cv2.imread(str(dst))
        new = read_rgb(src)
        seen.append((str(Path(src).parent), old is not None and not old.any()
                     and np.array_equal(new, picture)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    sink.show(picture)
    assert seen == [(str(tmp_path), True)]
    assert np.array_equal(read_rgb(target), picture)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.png"]  # no temporaries
    assert stat.S_IMODE(os.stat(target).st_mode) & 0o044 == 0o044
    assert sink.writes == 2 and sink.errors.total == 0


def test_file_sink_jpeg_and_interval(tmp_path: Path, picture: np.ndarray) -> None:
    target = tmp_path / "latest.jpg"
    clock = [100.0]
    sink = FileSink(target, 1.0, clock=lambda: clock[0])
    candidates = (picture, 255 - picture, np.zeros_like(picture))
    first, second, third = candidates

    def on_disk() -> np.ndarray:
        """Which candidate the file holds (JPEG is close, not exact)."""
        back = read_rgb(target).astype(np.int16)
        errors = [np.abs(back - c).mean() for c in candidates]
        assert min(errors) < 15
        return candidates[int(np.argmin(errors))]

    sink.show(first)
    assert on_disk() is first
    clock[0] = 100.6
    sink.show(second)  # within the interval: held
    assert on_disk() is first and sink.held == 1
    clock[0] = 101.0
    sink.show(third)  # the interval is over: the newest is written
    assert on_disk() is third
    clock[0] = 101.2
    sink.show(first)
    sink.close()  # the held picture is not lost
    assert on_disk() is first
    assert sink.writes == 3
    sink.close()
    with pytest.raises(DisplayError, match="after close"):
        sink.show(first)


def test_show_live_composes_for_a_file_only_when_due(
        tmp_path: Path, field: tuple[np.ndarray, FieldResult]) -> None:
    image, result = field
    clock = [0.0]
    sink = FileSink(tmp_path / "latest.png", 1.0, size=(320, 180), clock=lambda: clock[0])
    composer = LiveComposer()
    show_live(sink, composer, image, result, status())
    assert sink.writes == 1 and not sink.due
    clock[0] = 0.5
    show_live(sink, composer, image, result, status(stage="moving"))
    assert sink.writes == 1 and sink.held == 0  # not even composed
    clock[0] = 1.0
    show_live(sink, composer, image, result, status(stage="moving"))
    assert sink.writes == 2
    assert np.array_equal(read_rgb(tmp_path / "latest.png"),
                          composer.compose(image, result, status(stage="moving"),
                                           size=(320, 180)))


def test_file_sink_errors_are_counted_and_logged_once(
        tmp_path: Path, picture: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "gone"
    sink = FileSink(folder / "latest.jpg", 0.0)
    folder.rmdir()  # removed under the running box
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        blocked = FileSink(blocker / "latest.png", 0.0)
        for _ in range(3):
            sink.show(picture)
            blocked.show(picture)
    assert sink.errors.counts == {"ENOENT": 3} and sink.writes == 0
    assert blocked.errors.counts.get("ENOTDIR") == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("ENOENT" in m for m in warnings) == 1
    assert sum("ENOTDIR" in m for m in warnings) == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_file_sink_read_only_folder(tmp_path: Path, picture: np.ndarray) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        sink = FileSink(folder / "latest.jpg", 0.0)
        sink.show(picture)
        assert sink.errors.counts == {"EACCES": 1}
    finally:
        folder.chmod(0o755)


def test_file_sink_needs_a_known_format(tmp_path: Path) -> None:
    with pytest.raises(DisplayError, match=r"\.jpg"):
        FileSink(tmp_path / "latest.bmp", 1.0)


# ---------------------------------------------------------------- open_display


def test_open_display_choices(tmp_path: Path, pygame_module: object) -> None:
    from appliance.outputs.display.pygame_sink import PygameSink

    none = open_display(DisplayConfig(sink="none"))
    assert isinstance(none, NullSink)
    with open_display(DisplayConfig(sink="file", path=str(tmp_path / "d" / "x.png"),
                                    width=320, height=240)) as file_sink:
        assert isinstance(file_sink, FileSink) and file_sink.size == (320, 240)
        show_live(file_sink, LiveComposer(), None, None, status(source_state="opening"))
    assert (tmp_path / "d" / "x.png").is_file()
    with open_display(DisplayConfig(sink="offscreen", width=200, height=100)) as screen:
        assert isinstance(screen, PygameSink) and screen.size == (200, 100)
    camera = FakePicamera2()
    overlay = open_display(DisplayConfig(sink="picamera2"), picam2=camera)
    assert isinstance(overlay, Picamera2OverlaySink) and overlay.annotations_only


def test_open_display_errors_name_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DisplayError, match="unknown display sink 'hdmi'"):
        open_display(DisplayConfig(sink="hdmi"))
    with pytest.raises(DisplayError, match="picamera2"):
        open_display(DisplayConfig(sink="picamera2"))
    # A box without pygame: importing it fails, as it would there.
    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(DisplayError, match=r"pip install eyepiece\[display\]"):
        open_display(DisplayConfig(sink="window"))


@pytest.fixture(autouse=True)
def _no_display_left_open() -> Iterator[None]:
    yield
    pygame = sys.modules.get("pygame")
    if pygame is not None and pygame.display.get_init():
        pygame.display.quit()


def _case(control: str, mode: str = "tumour") -> LiveCase:
    return LiveCase(case_id="c-7", mode=mode, control=control, control_expected="3+",
                    calibration="calibrated by the control: thresholds x0.80",
                    score="2+", category="equivocal", fields_counted=4, tumour_cells=612,
                    flags=1)


@pytest.mark.parametrize("control, mode, line, colour", [
    ("not_checked", "tumour", "CONTROL NOT CHECKED", ALERT_COLOUR),
    ("failed", "tumour", "CONTROL FAILED", ALERT_COLOUR),
    ("valid", "tumour", "Control valid; calibrated by the control", None),
    ("checking", "control", "CONTROL CHECK (3+)", ALERT_COLOUR),
])
def test_the_panel_shows_the_running_case_score_beside_the_field(
        field: tuple[np.ndarray, FieldResult], control: str, mode: str, line: str,
        colour: tuple[int, int, int] | None) -> None:
    _, result = field
    status = LiveStatus(source_state="streaming", source_reason="", stage="stable",
                        reported=True, result_in_view=True, capture_fps=10.0,
                        processed_fps=2.0, latency_ms=300.0, case=_case(control, mode))
    items = [item for row in panel_rows(result, status) for item in row.items]
    texts = [item.text for item in items]
    assert any(t.startswith(f"{result.score.value}") or result.score.value in t
               for t in texts[:3])  # the field's own score comes first
    assert any("Case score 2+ equivocal - 4 fields, 612 cells" in t for t in texts)
    match = next(item for item in items if item.text.startswith(line))
    if colour is not None:
        assert match.colour == colour
    assert any("1 flag(s)" in t for t in texts)
    bare = LiveStatus(source_state="streaming", source_reason="", stage="stable",
                      reported=True, result_in_view=True, capture_fps=10.0,
                      processed_fps=2.0, latency_ms=300.0)
    assert not any("Case" in item.text for row in panel_rows(result, bare)
                   for item in row.items)


def test_panel_rows_that_do_not_fit_are_left_out_whole() -> None:
    from appliance.outputs.display.live import fitting_rows
    from appliance.outputs.overlay import Item, Row

    style = live_layout((640, 480), (1280, 720)).style
    short = Row((Item("Case h-1 well: positive AC-1", TEXT_COLOUR),))
    long = Row((Item("Warning: " + "a long warning that wraps " * 8, ALERT_COLOUR),))
    one_line = fitting_rows([short], style, 320, 10_000)
    height = max(g.baseline for g in one_line) + 40  # room for the short row and a bit
    fitted = fitting_rows([short, long, short], style, 320, height)
    assert [g.text for g in fitted] == [g.text for g in one_line]  # no half warning
    everything = fitting_rows([short, long, short], style, 320, 10_000)
    assert len(everything) > 3 and everything[0].text == one_line[0].text
