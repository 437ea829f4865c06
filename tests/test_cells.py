"""Cell instances and membrane measurement on hand-drawn class maps with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from appliance.assays.her2.cells import (
    MEMBRANE,
    OTHER_NUCLEUS,
    TUMOUR_NUCLEUS,
    measure_cells,
    nucleus_instances,
)
from appliance.config import MeasureConfig

UM = 0.5  # µm per pixel of the drawings


def draw_cell(classes: np.ndarray, dab: np.ndarray, centre: tuple[int, int], *,
              od: float, coverage: float, start_deg: float = 0.0) -> None:
    """A tumour nucleus (r = 10 px) and a membrane arc (r = 20 px) of ``coverage``."""
    cv2.circle(classes, centre, 10, TUMOUR_NUCLEUS, -1)
    if coverage > 0:
        ring = np.zeros_like(classes)
        cv2.ellipse(ring, centre, (20, 20), 0, start_deg, start_deg + 360 * coverage, 1, 3)
        classes[ring > 0] = MEMBRANE
        dab[ring > 0] = od


def test_complete_and_partial_membranes_are_measured() -> None:
    classes = np.zeros((200, 300), np.uint8)
    dab = np.zeros((200, 300), np.float32)
    draw_cell(classes, dab, (50, 50), od=0.8, coverage=1.0)
    draw_cell(classes, dab, (150, 50), od=0.3, coverage=0.5, start_deg=30)
    draw_cell(classes, dab, (250, 50), od=0.5, coverage=0.0)
    draw_cell(classes, dab, (100, 150), od=0.5, coverage=0.25)
    cv2.circle(classes, (220, 150), 5, OTHER_NUCLEUS, -1)  # a lymphocyte: not measured
    cfg = MeasureConfig()
    nuclei = nucleus_instances(classes, min_area_px=20, min_separation_px=5)
    assert nuclei.labels.max() == 5
    assert int(nuclei.tumour.sum()) == 4
    cells = sorted(measure_cells(nuclei, classes == MEMBRANE, dab, um_per_px=UM, cfg=cfg),
                   key=lambda c: (round(c.y, -1), c.x))
    assert [(round(c.x), round(c.y)) for c in cells] == [(50, 50), (150, 50), (250, 50),
                                                         (100, 150)]
    complete, half, bare, quarter = cells
    assert complete.completeness >= 0.97 and complete.intensity_od == pytest.approx(0.8)
    assert half.completeness == pytest.approx(0.5, abs=0.06)
    assert half.intensity_od == pytest.approx(0.3)
    assert bare.completeness == 0 and bare.intensity_od == 0
    assert quarter.completeness == pytest.approx(0.25, abs=0.06)
    assert all(len(c.outline) >= 4 for c in cells)


def test_unstained_membrane_pixels_below_faint_do_not_count() -> None:
    classes = np.zeros((100, 100), np.uint8)
    dab = np.zeros((100, 100), np.float32)
    draw_cell(classes, dab, (50, 50), od=0.1, coverage=1.0)  # membrane seen, OD below faint
    nuclei = nucleus_instances(classes, min_area_px=20, min_separation_px=5)
    (cell,) = measure_cells(nuclei, classes == MEMBRANE, dab, um_per_px=UM, cfg=MeasureConfig())
    assert cell.completeness == 0.0


def test_shared_membrane_counts_for_both_neighbours() -> None:
    # One membrane line between two cells: a pathologist sees it on both cells' outlines.
    classes = np.zeros((100, 160), np.uint8)
    dab = np.zeros((100, 160), np.float32)
    for cx in (50, 110):
        cv2.circle(classes, (cx, 50), 10, TUMOUR_NUCLEUS, -1)
    cv2.line(classes, (80, 20), (80, 80), MEMBRANE, 3)
    dab[classes == MEMBRANE] = 0.7
    nuclei = nucleus_instances(classes, min_area_px=20, min_separation_px=5)
    left, right = sorted(measure_cells(nuclei, classes == MEMBRANE, dab, um_per_px=UM,
                                       cfg=MeasureConfig()), key=lambda c: c.x)
    assert 0.2 < left.completeness < 0.4
    assert right.completeness == pytest.approx(left.completeness, abs=0.06)


def test_a_large_neighbour_does_not_take_a_cells_membrane() -> None:
    # A small cell whose complete membrane lies nearer a big neighbour's nucleus edge than
    # its own: a nearest-nucleus split would hand part of it to the neighbour.
    classes = np.zeros((120, 200), np.uint8)
    dab = np.zeros((120, 200), np.float32)
    cv2.circle(classes, (40, 60), 20, TUMOUR_NUCLEUS, -1)
    cv2.circle(classes, (130, 60), 28, MEMBRANE, 3)
    cv2.circle(classes, (130, 60), 6, TUMOUR_NUCLEUS, -1)
    dab[classes == MEMBRANE] = 0.5
    nuclei = nucleus_instances(classes, min_area_px=20, min_separation_px=5)
    cfg = MeasureConfig(membrane_reach_um=16.0)
    big, small = sorted(measure_cells(nuclei, classes == MEMBRANE, dab, um_per_px=UM, cfg=cfg),
                        key=lambda c: c.x)
    assert small.completeness >= 0.97
    assert small.intensity_od == pytest.approx(0.5)
    assert big.completeness < 0.5


def test_touching_nuclei_are_split() -> None:
    classes = np.zeros((100, 100), np.uint8)
    cv2.circle(classes, (40, 50), 10, TUMOUR_NUCLEUS, -1)
    cv2.circle(classes, (58, 50), 10, TUMOUR_NUCLEUS, -1)
    nuclei = nucleus_instances(classes, min_area_px=20, min_separation_px=5)
    assert nuclei.labels.max() == 2


def test_cell_cut_by_the_edge_is_not_measured() -> None:
    classes = np.zeros((100, 100), np.uint8)
    dab = np.zeros((100, 100), np.float32)
    draw_cell(classes, dab, (0, 50), od=0.8, coverage=1.0)  # half outside
    draw_cell(classes, dab, (60, 50), od=0.8, coverage=1.0)
    nuclei = nucleus_instances(classes, min_area_px=20, min_separation_px=5)
    cells = measure_cells(nuclei, classes == MEMBRANE, dab, um_per_px=UM, cfg=MeasureConfig())
    assert [round(c.x) for c in cells] == [60]


def test_empty_map_has_no_cells() -> None:
    classes = np.zeros((64, 64), np.uint8)
    nuclei = nucleus_instances(classes, min_area_px=20, min_separation_px=5)
    assert measure_cells(nuclei, classes == MEMBRANE, np.zeros((64, 64), np.float32),
                         um_per_px=UM, cfg=MeasureConfig()) == []
