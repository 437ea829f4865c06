"""The carried-scale probe's bookkeeping (its measurements need the model: see docs/hep2.md)."""

from __future__ import annotations

import pytest

from tools.probe_hep2_carried_scale import (
    WellScales,
    carried_scale_holds,
    main,
    summarise,
    turned_scale,
)


def _well(seen_b: float | None, seen_c: float | None, fit_b: bool = True,
          fit_c: bool = False) -> WellScales:
    return WellScales(truth=0.5, carried=0.55, fresh_b=0.45, seen_b=seen_b, turned=1.0,
                      seen_c=seen_c, fit_holds_b=fit_b, fit_holds_c=fit_c)


def test_a_turned_objective_is_one_step_within_10x_to_40x() -> None:
    assert turned_scale(0.25) == 0.5 and turned_scale(0.4) == 0.8
    assert turned_scale(0.5) == 0.25 and turned_scale(1.0) == 0.5


def test_the_size_check_keeps_a_scale_within_its_factor_and_when_it_cannot_say() -> None:
    assert carried_scale_holds(0.6, 0.5, 1.4) and carried_scale_holds(None, 0.5, 1.4)
    assert not carried_scale_holds(0.75, 0.5, 1.4) and not carried_scale_holds(0.3, 0.5, 1.4)


def test_shares_kept_and_caught_per_check() -> None:
    wells = [_well(0.55, 1.1),  # size says same for B, turned for C
             _well(0.80, 0.60, fit_c=True),  # size wrong both ways, the fit catches nothing
             _well(0.56, 0.58, fit_c=False)]  # C missed by size, caught by the fit
    doc = summarise(wells)
    size = doc["factors"]["1.4"]["size"]
    both = doc["factors"]["1.4"]["size_and_fit"]
    assert size == {"same_objective_kept": pytest.approx(2 / 3),
                    "turned_objective_caught": pytest.approx(1 / 3)}
    assert both == {"same_objective_kept": pytest.approx(2 / 3),
                    "turned_objective_caught": pytest.approx(2 / 3)}
    assert doc["fit_alone"]["turned_objective_caught"] == pytest.approx(2 / 3)
    assert doc["carried_scale_error"]["n"] == 3
    assert doc["carried_scale_error"]["median_off"] == pytest.approx(0.1)


def test_no_wells_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--wells", "0"])
