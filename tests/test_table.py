"""The console table of reported fields: a superseding report says which one it replaces."""

from __future__ import annotations

from dataclasses import replace

from appliance.assays.her2.types import FieldResult, ModelRef, Supersedes
from appliance.outputs.table import format_hep2_row, format_row
from tests.test_hep2_well import cell, field, refused

MODEL = ModelRef(name="her2-seg", sha256="ab" * 32, precision="int8",
                 validated_on="generated data only")


def test_a_superseding_row_names_the_report_it_replaces() -> None:
    her2 = FieldResult(file="cam0", seq=12, assay="her2", status="not_scorable", model=MODEL,
                       image_width=320, image_height=240, reason="out of focus")
    assert "replaces" not in format_row(her2)
    again = format_row(replace(her2, supersedes=Supersedes("cam0", 10, "settings_changed")))
    assert again.endswith("replaces #10 (read again under new settings); out of focus")
    hep2 = field([cell("homogeneous")] * 20, "cam0")
    assert "replaces" not in format_hep2_row(hep2)
    row = format_hep2_row(replace(hep2, supersedes=Supersedes("cam0", 3, "now_scorable")))
    assert "AC-1" in row and "(replaces #3 (now scorable)" in row
    row = format_hep2_row(replace(hep2, supersedes=Supersedes("cam0", 4, "sharper")))
    assert "(replaces #4 (sharper view)" in row
    gone = format_hep2_row(replace(refused("cam0"), supersedes=Supersedes(
        "cam0", 1, "settings_changed")))
    assert gone.endswith("replaces #1 (read again under new settings); out of focus")
