"""The overlay picture, checked by its pixels: outlines, banner text, research-use line."""

from __future__ import annotations

import math
import os
import stat
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.assays.her2.types import (
    Category,
    CellMeasurement,
    FieldResult,
    Intensity,
    MembraneClass,
    ModelRef,
    Score,
)
from appliance.outputs.overlay import (
    ALERT_COLOUR,
    BANNER_BG,
    CLASS_COLOURS,
    TEXT_COLOUR,
    ascii_text,
    render_overlay,
    write_png,
)

GREY = (128, 128, 128)  # no class, text or banner colour is grey
GENERATED = ModelRef(name="her2-cells-unet", sha256="ab" * 32, precision="int8",
                     validated_on="generated data (synthetic fields)")
CLINICAL = replace(GENERATED, validated_on="412 annotated fields from 3 hospitals")
INTENSITY = {
    MembraneClass.NONE: Intensity.NONE,
    MembraneClass.INCOMPLETE_FAINT: Intensity.FAINT,
    MembraneClass.INCOMPLETE_MODERATE_INTENSE: Intensity.STRONG,
    MembraneClass.COMPLETE_WEAK_MODERATE: Intensity.MODERATE,
    MembraneClass.COMPLETE_INTENSE: Intensity.STRONG,
}


def square(cx: int, cy: int, half: int) -> tuple[tuple[int, int], ...]:
    return ((cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half),
            (cx - half, cy + half))


def cell(i: int, cls: MembraneClass, x: int, y: int, *, outline: bool = True) -> CellMeasurement:
    return CellMeasurement(cell_id=i, x=float(x), y=float(y), nucleus_area_um2=28.3,
                           completeness=1.0, intensity_od=0.5, intensity=INTENSITY[cls],
                           membrane_class=cls, outline=square(x, y, 12) if outline else ())


def result(*, width: int = 640, height: int = 480, model: ModelRef = CLINICAL,
           cells: tuple[CellMeasurement, ...] = (), score: Score = Score.THREE,
           warnings: tuple[str, ...] = ()) -> FieldResult:
    category = {Score.THREE: Category.POSITIVE, Score.TWO: Category.EQUIVOCAL,
                Score.ONE: Category.LOW, Score.ZERO: Category.NULL}[score]
    percent = {c: 20.0 for c in MembraneClass}
    return FieldResult(file="f.png", seq=0, assay="her2", status="scored", model=model,
                       image_width=width, image_height=height, score=score, category=category,
                       rule="test", tumour_cells=len(cells) or 25, percent=percent, cells=cells,
                       warnings=warnings, um_per_px=0.5, um_per_px_source="config",
                       created_at="2025-01-31T14:05:09+00:00")


def not_scorable(**kw: object) -> FieldResult:
    return replace(result(**kw),  # type: ignore[arg-type]
                   status="not_scorable", score=None, category=None, rule=None,
                   reason="out of focus (sharpness 0.05 < 0.12)", reason_code="out_of_focus")


def grey(width: int = 640, height: int = 480) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def count(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.all(pixels == np.asarray(colour, dtype=np.uint8), axis=-1).sum())


def count_near(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 30) -> int:
    """Pixels within ``tol`` of a colour: thin anti-aliased text has few exact ones."""
    diff = np.abs(pixels.astype(np.int16) - np.asarray(colour, dtype=np.int16))
    return int(np.all(diff <= tol, axis=-1).sum())


def test_image_kept_and_banner_added_below() -> None:
    img = grey()
    out = render_overlay(img, result())
    assert out.dtype == np.uint8 and out.shape[1] == 640 and out.shape[0] > 480
    assert np.array_equal(out[:480], img)  # no cells: the picture is untouched
    assert count(out[480:], BANNER_BG) > 0.5 * (out.shape[0] - 480) * 640
    assert not np.shares_memory(out, img)


def test_outlines_have_the_class_colour_at_their_points() -> None:
    cells = tuple(cell(i, cls, 60 + 100 * i, 100) for i, cls in enumerate(MembraneClass))
    out = render_overlay(grey(), result(cells=cells))
    for c in cells:
        for x, y in c.outline:
            assert tuple(out[y, x]) == CLASS_COLOURS[c.membrane_class], (c.membrane_class, x, y)
        # The inside of the outline is left alone.
        assert tuple(out[int(c.y), int(c.x)]) == GREY


def test_cell_without_outline_gets_a_circle() -> None:
    c = cell(0, MembraneClass.COMPLETE_INTENSE, 200, 200, outline=False)
    out = render_overlay(grey(), result(cells=(c,)))
    colour = CLASS_COLOURS[MembraneClass.COMPLETE_INTENSE]
    # nucleus 28.3 µm² at 0.5 µm/px: radius 3 µm = 6 px.
    radius = round(math.sqrt(28.3 / math.pi) / 0.5)
    assert tuple(out[200, 200 + radius]) == colour
    assert tuple(out[200 - radius, 200]) == colour
    assert tuple(out[200, 200]) == GREY
    assert count(out[:480], colour) > 10


def test_outlines_scale_to_a_downscaled_frame() -> None:
    c = cell(0, MembraneClass.INCOMPLETE_FAINT, 400, 300)
    out = render_overlay(grey(320, 240), result(width=640, height=480, cells=(c,)))
    colour = CLASS_COLOURS[MembraneClass.INCOMPLETE_FAINT]
    for x, y in c.outline:
        assert tuple(out[y // 2, x // 2]) == colour


def test_banner_shows_the_score_text() -> None:
    three = render_overlay(grey(), result(score=Score.THREE))
    zero = render_overlay(grey(), result(score=Score.ZERO))
    banner3, banner0 = three[480:], zero[480:]
    assert count(banner3, TEXT_COLOUR) > 200
    assert count(three[:480], TEXT_COLOUR) == 0
    assert banner3.shape == banner0.shape
    # Only the headline differs between the two: its pixels must differ.
    diff_rows = np.nonzero(np.any(banner3 != banner0, axis=(1, 2)))[0]
    assert diff_rows.size > 0
    assert diff_rows.max() < banner3.shape[0] // 2  # the headline, above info and legend


def test_legend_swatches_show_every_class_colour() -> None:
    banner = render_overlay(grey(), result())[480:]
    for colour in CLASS_COLOURS.values():
        assert count(banner, colour) > 20


def test_research_use_line_only_for_generated_validation() -> None:
    ruo = render_overlay(grey(), result(model=GENERATED))
    clinical = render_overlay(grey(), result(model=CLINICAL))
    # Alert colour is used by warnings, NOT SCORABLE and this line; none of the others here.
    assert count(clinical[480:], ALERT_COLOUR) == 0
    assert count(ruo[480:], ALERT_COLOUR) > 100
    assert ruo.shape[0] > clinical.shape[0]  # one more line
    assert np.array_equal(ruo[:clinical.shape[0] - 20], clinical[:clinical.shape[0] - 20])


def test_not_scorable_shows_alert_instead_of_score() -> None:
    refused = render_overlay(grey(), not_scorable())
    scored = render_overlay(grey(), result())
    assert count(refused[480:], ALERT_COLOUR) > 100
    assert count(scored[480:], ALERT_COLOUR) == 0


def test_warnings_are_shown() -> None:
    plain = render_overlay(grey(), result())
    warned = render_overlay(grey(), result(warnings=("scale estimated: 0.25 µm/px ≤ 0.3",)))
    assert warned.shape[0] > plain.shape[0]
    assert count(warned[480:], ALERT_COLOUR) > 50


def test_text_grows_with_the_image() -> None:
    small = render_overlay(grey(1280, 720), result(width=1280, height=720))
    big = render_overlay(grey(2560, 1440), result(width=2560, height=1440))
    ratio = (big.shape[0] - 1440) / (small.shape[0] - 720)
    assert 1.8 < ratio < 2.2


@pytest.mark.parametrize(("width", "height"), [(64, 64), (8, 8), (64, 3000), (20000, 48)])
def test_tiny_and_huge_images_render(width: int, height: int) -> None:
    c = cell(0, MembraneClass.COMPLETE_INTENSE, width // 2, height // 2)
    r = replace(result(width=width, height=height, model=GENERATED, cells=(c,)),
                warnings=("a long warning that has to wrap on a narrow picture",))
    out = render_overlay(grey(width, height), r)
    assert out.shape[1] == width and out.shape[0] > height
    # Every 5th pixel is plenty to find the text and keeps the 20000-px case fast.
    banner = out[height::5, ::5] if width > 5000 else out[height:]
    assert count_near(banner, TEXT_COLOUR) > 0
    assert count_near(banner, ALERT_COLOUR) > 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        render_overlay(np.zeros((10, 10), np.uint8), result())
    with pytest.raises(ValueError, match="uint8 RGB"):
        render_overlay(np.zeros((10, 10, 3), np.float32), result())
    bad = replace(cell(3, MembraneClass.NONE, 10, 10, outline=False), x=math.nan)
    with pytest.raises(ValueError, match="cell 3"):
        render_overlay(grey(), result(cells=(bad,)))


def test_ascii_text() -> None:
    assert ascii_text("0.25 µm/px, ≤ 10% — café") == "0.25 um/px, <= 10% - cafe"
    assert ascii_text("plain").isascii()


def test_write_png_round_trips_atomically(tmp_path: Path) -> None:
    rgb = render_overlay(grey(), result(cells=(cell(0, MembraneClass.NONE, 50, 50),)))
    target = tmp_path / "sub" / "overlay.png"
    write_png(target, rgb)
    write_png(target, rgb)  # replacing an existing picture
    bgr = cv2.imread(str(target), cv2.IMREAD_COLOR)
    assert bgr is not None
    back = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, rgb)
    assert [p.name for p in target.parent.iterdir()] == ["overlay.png"]  # no temporaries
    assert stat.S_IMODE(os.stat(target).st_mode) & 0o044 == 0o044  # readable by others


def test_write_png_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # os.replace cannot put a file over a folder
    (target / "x").write_text("keep")
    with pytest.raises(OSError):
        write_png(target, grey(16, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", np.zeros((4, 4), np.uint8))
