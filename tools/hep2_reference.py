"""Generated reference wells, and the calibration a lab would make from them.

The eval tool scores generated specimens with ``units_per_grey`` = 1, which is the
generator's own grey scale: exact for an unbleached cell, and a calibration no lab can have.
A lab instead images a reference serum at the pinned exposure and runs ``appliance
calibrate-iif`` (docs/hep2-calibration.md), so its reference fields are bleached and
measured like its specimens. :func:`calibrate_on_reference` does that on generated wells, with
the product's own calibration function, so an evaluation can score the box as a lab would
run it (``python -m tools.eval_hep2 --calibrate``).

The reference chosen (before any specimen was scored with it):

- the cut-off serum, drawn at ``hep2.intensity.negative_below`` (20 units), the choice the
  calibration page suggests;
- homogeneous (AC-1); a reference of another pattern calibrates a little differently
  (docs/hep2.md, "Calibrated as a lab would");
- one well per objective (40x, 20x, 10x), 5 fields each, every field bleached as the
  generator draws it (0-30%): the 15 fields are pooled into one calibration, since the
  generator draws every objective equally bright.

Seeds from 790000, apart from the eval (500000+), tuning (600000+), training and its
calibration (700000-751000), the probes (760000+, 770000+) and the stress tool
(780000+).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.calibration import (
    Calibration,
    CalibrationError,
    units_per_grey_from_reference,
)
from appliance.capture.frame import Frame
from tools.synth.hep2_fields import NEGATIVE_BELOW, Hep2FieldSpec, generate_hep2_field

REFERENCE_SEED = 790_000
REFERENCE_PATTERN = "homogeneous"
REFERENCE_UNITS = NEGATIVE_BELOW  # the cut-off serum
REFERENCE_SCALES = (0.27, 0.5, 0.9)  # um/px: one well at 40x, 20x and 10x
FIELDS_PER_WELL = 5


@dataclass(frozen=True)
class ReferenceField:
    """One reference field as scored: its seed, scale and intensity in grey levels."""

    seed: int
    um_per_px: float
    grey: float


def reference_specs(*, first_seed: int = REFERENCE_SEED,
                    scales: Sequence[float] = REFERENCE_SCALES,
                    fields_per_well: int = FIELDS_PER_WELL) -> list[Hep2FieldSpec]:
    """The reference wells' fields: one well per scale, its fields sharing the well's
    microscope and camera (``camera_seed``), each with its own layout and bleaching."""
    specs = []
    seed = first_seed
    for um_per_px in scales:
        well = seed
        for _ in range(fields_per_well):
            specs.append(Hep2FieldSpec(seed=seed, um_per_px=um_per_px,
                                       patterns=((REFERENCE_PATTERN, 1.0),),
                                       intensity=REFERENCE_UNITS, camera_seed=well))
            seed += 1
    return specs


def measure_reference(assay: Hep2Assay, specs: Sequence[Hep2FieldSpec]) -> list[ReferenceField]:
    """Score each field with its scale declared; its intensity in grey levels (the assay's
    units undone, as ``appliance calibrate-iif`` does). CalibrationError for a field the
    assay refuses or finds no cell in."""
    per_grey = assay.cfg.hep2.intensity.units_per_grey
    out = []
    for seq, spec in enumerate(specs, start=1):
        field = generate_hep2_field(spec)
        result = assay.score(Frame(image=field.image, seq=seq, timestamp=0.0,
                                   source=f"reference seed {spec.seed}",
                                   um_per_px=field.um_per_px))
        if result.intensity_units is None or result.cells_interphase == 0:
            raise CalibrationError(f"reference seed {spec.seed}: not measured "
                                   f"({result.reason or 'no interphase cell'})")
        out.append(ReferenceField(spec.seed, field.um_per_px, result.intensity_units / per_grey))
    return out


def calibrate_on_reference(assay: Hep2Assay, specs: Sequence[Hep2FieldSpec] | None = None
                           ) -> tuple[Calibration, list[ReferenceField]]:
    """The calibration the reference fields give (default :func:`reference_specs`), by the
    product's ``units_per_grey_from_reference``, so its checks apply; and the fields."""
    fields = measure_reference(assay, reference_specs() if specs is None else specs)
    return units_per_grey_from_reference([f.grey for f in fields], REFERENCE_UNITS), fields
