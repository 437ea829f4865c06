"""The white-light probe: its views, its measure, and a small run."""

from __future__ import annotations

import numpy as np
import pytest

from tools import probe_hep2_white_light as probe


def test_views_are_the_whole_image_its_parts_and_small_crops() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    sizes = [v.shape[:2] for v in probe.views(image)]
    assert sizes == [(480, 640)] * 3 + [(240, 320)] * 3 + [(120, 160)] * 3 + [(64, 96)] * 3
    small = [v.shape[:2] for v in probe.views(np.zeros((64, 96, 3), np.uint8))]
    assert (16, 24) not in small and (32, 48) in small


def test_the_brightest_light_and_its_balance() -> None:
    rgb = np.zeros((10, 100, 3), np.uint8)
    rgb[0, :20] = (200, 220, 210)  # 2 % of the pixels: white-ish lamp light
    assert probe.brightest_colour(rgb) == pytest.approx((200.0, 220.0, 210.0))
    grey, balance = probe.grey_and_balance(rgb)
    assert grey == pytest.approx(200.0) and balance == pytest.approx(200 / 220)


def test_a_small_run_prints_both_sides(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.main(["--her2-fields", "1", "--fitc-fields", "1"]) == 0
    out = capsys.readouterr().out
    assert "brightfield: 21 views" in out
    assert out.count("taken for white: 0 of 1") == len(probe.FITC_LOOKS)
