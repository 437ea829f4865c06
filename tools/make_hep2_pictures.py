"""The HEp-2 pictures in the docs, made by the real assay on generated fields.

* ``docs/img/hep2-overlay-homogeneous.png``: the stored overlay of an AC-1 field with
  metaphases (magenta), its banner and the metaphase evidence;
* ``docs/img/hep2-live-mixed.png``: the live display on a mixed specimen;
* ``docs/img/hep2-overlay-nucleolar-10x.png``: a nucleolar field at 10x, whose subtype
  call carries the warning to report the group or confirm at a higher magnification;
* ``docs/img/hep2-overlay-faint-second.png``: a weak AC-1 + AC-8 field (both in every
  cell) whose nucleoli the region head finds although AC-1 takes most of the votes.

    python -m tools.make_hep2_pictures
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from appliance.assays.hep2.assay import Hep2Assay
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from appliance.outputs.display.live import LiveStatus, compose_live
from appliance.outputs.hep2_overlay import render_overlay
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

REPO = Path(__file__).resolve().parent.parent
IMG = REPO / "docs" / "img"


def _write(name: str, rgb: np.ndarray) -> None:
    path = IMG / name
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    print(path.relative_to(REPO))


def main() -> int:
    """Write the four pictures."""
    cfg = with_overrides(Config(), {"assay": "hep2"})
    with Hep2Assay.from_config(cfg) as assay:
        ac1 = generate_hep2_field(Hep2FieldSpec(
            seed=61_001, width=960, height=720, um_per_px=0.5,
            patterns=(("homogeneous", 1.0),), intensity=110.0, mitotic_fraction=0.08))
        result = assay.score(Frame(image=ac1.image, seq=1, timestamp=0.0,
                                   source="ac1.png", um_per_px=0.5))
        _write("hep2-overlay-homogeneous.png", render_overlay(ac1.image, result))
        mixed = generate_hep2_field(Hep2FieldSpec(
            seed=61_002, width=1024, height=768, um_per_px=0.5,
            patterns=(("centromere", 0.5), ("cyto_fibrillar", 0.5)), intensity=120.0))
        result = assay.score(Frame(image=mixed.image, seq=2, timestamp=0.0,
                                   source="camera", um_per_px=0.5))
        status = LiveStatus(source_state="streaming", source_reason="", stage="stable",
                            reported=True, result_in_view=True, capture_fps=30.0,
                            processed_fps=3.9, latency_ms=320.0)
        _write("hep2-live-mixed.png", compose_live(mixed.image, result, status,
                                                   size=(1280, 720)))
        nucleolar = generate_hep2_field(Hep2FieldSpec(
            seed=61_003, width=800, height=600, um_per_px=0.95,
            patterns=(("nucleolar_homogeneous", 1.0),), intensity=120.0))
        result = assay.score(Frame(image=nucleolar.image, seq=3, timestamp=0.0,
                                   source="ac8-10x.png", um_per_px=0.95))
        _write("hep2-overlay-nucleolar-10x.png", render_overlay(nucleolar.image, result))
        faint = generate_hep2_field(Hep2FieldSpec(
            seed=61_006, width=960, height=720, um_per_px=0.5, combined=True,
            patterns=(("homogeneous", 0.5), ("nucleolar_homogeneous", 0.5)), intensity=45.0))
        result = assay.score(Frame(image=faint.image, seq=4, timestamp=0.0,
                                   source="ac1-ac8.png", um_per_px=0.5))
        _write("hep2-overlay-faint-second.png", render_overlay(faint.image, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
