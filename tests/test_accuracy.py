"""The shipped INT8 model, end to end, on held-out generated fields (never trained on).

These are the acceptance figures of the HER2 skeleton: field-score accuracy ≥ 0.95 and
per-cell membrane-class accuracy ≥ 0.90. Generated data only: they say nothing yet
about real tissue (see models/her2/manifest.json).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.assays.her2.assay import Her2Assay
from appliance.config import Config
from tools.eval_her2 import evaluate, held_out_specs

FIELDS = 48  # 12 per score


@pytest.fixture(scope="module")
def assay() -> Iterator[Her2Assay]:
    with Her2Assay.from_config(Config()) as a:
        yield a


def test_field_and_cell_accuracy_on_held_out_fields(assay: Her2Assay) -> None:
    metrics = evaluate(assay, held_out_specs(FIELDS))
    summary = metrics.summary()
    assert metrics.fields == FIELDS
    assert metrics.field_accuracy >= 0.95, summary
    assert metrics.cell_accuracy >= 0.90, summary
    assert metrics.cell_recall >= 0.80, summary


def test_scale_estimated_from_the_image_when_nobody_says(assay: Her2Assay) -> None:
    metrics = evaluate(assay, held_out_specs(16), known_scale=False)
    assert metrics.field_accuracy >= 0.8, metrics.summary()
