"""The pictures of the case workflow in the docs, made by the real code on a generated slide.

An under-stained slide (70% of the usual DAB) goes through a case exactly as at the
microscope: open, check the 3+ control, show the tumour fields, close. Written:

* ``docs/img/live-display-case.png``: the live display on the last tumour field, with the
  running case score and the control status beside the field's own score;
* ``docs/img/live-display-no-control.png``: the same field in a case whose control was
  never checked (what the pathologist sees before the control);
* ``docs/examples/case-report.pdf`` and ``.html``: the report of that case.

    python -m tools.make_case_pictures [--seed 3] [--dab-scale 0.7]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2

from appliance.assays.her2.assay import Her2Assay
from appliance.capture.frame import Frame
from appliance.config import Config, with_overrides
from appliance.outputs.display.live import LiveStatus, compose_live
from appliance.outputs.report.html import write_report
from appliance.outputs.store import ResultStore
from appliance.service.case_report import report_data
from appliance.service.case_summary import CaseSummary
from appliance.service.cases import CaseWorkflow
from appliance.service.recorder import Recorder
from tools.synth.her2_slide import SlideSpec, generate_slide

REPO = Path(__file__).resolve().parent.parent
UM_PER_PX = 0.5
SCREEN = (1280, 720)


def _status(cases: CaseWorkflow) -> LiveStatus:
    return LiveStatus(source_state="streaming", source_reason="", stage="stable",
                      reported=True, result_in_view=True, capture_fps=30.0,
                      processed_fps=2.6, latency_ms=690.0, case=cases.live())


def _write_png(path: Path, rgb: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):  # type: ignore[call-overload]
        raise OSError(f"cannot write {path}")
    print(path.relative_to(REPO))


def run(seed: int, dab_scale: float, with_control: bool, out: Path | None) -> None:
    """One case on one slide; the live picture of its last field to ``out``."""
    fields = generate_slide(SlideSpec(seed=seed, control_level="3+", control_fields=3,
                                      tumour_scores=("3+", "2+", "3+"), dab_scale=dab_scale,
                                      um_per_px=UM_PER_PX, width=1024, height=768,
                                      duplicates=(0,)))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = with_overrides(Config(), {"store.path": str(Path(tmp) / "r.sqlite")})
        with ResultStore(cfg.store.path) as store, Her2Assay.from_config(cfg) as assay:
            cases = CaseWorkflow(cfg, store)
            assay.field_context = cases.context
            recorder = Recorder(store=store, config_sha256=cfg.sha256(), overlay_dir=None,
                                out=io.StringIO(),
                                companion_for=lambda r, img: cases.companion(r, img,
                                                                             source="score"),
                                after_store=[cases.after_field])
            cases.start_case("S25-example", source="cli")
            last = None
            for role in ("control", "tumour"):
                if role == "control" and not with_control:
                    continue
                if role == "control":
                    cases.start_control("3+", source="cli")
                for i, f in enumerate(x for x in fields if x.role == role):
                    frame = Frame(image=f.image, seq=i + 1, timestamp=time.monotonic(),
                                  source=f"{f.name}.png", um_per_px=UM_PER_PX)
                    result = assay.score(frame)
                    recorder.record(result, f.image)
                    last = (f.image, result)
                if role == "control":
                    cases.end_control(source="cli")
            assert last is not None
            if out is not None:
                _write_png(out, compose_live(last[0], last[1], _status(cases), size=SCREEN))
            if with_control:
                cases.end_case(None, source="cli")
                summary = cases.summary("S25-example", thumbnails=True)
                assert isinstance(summary, CaseSummary)  # a HER2 case
                data = report_data(summary, device_id="scope-3", config_sha256=cfg.sha256())
                for path in write_report(data, REPO / "docs" / "examples", "case-report"):
                    print(path.relative_to(REPO))


def main(argv: Sequence[str] | None = None) -> int:
    """Write the docs' case pictures and example report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--dab-scale", type=float, default=0.7)
    args = ap.parse_args(argv)
    img = REPO / "docs" / "img"
    run(args.seed, args.dab_scale, True, img / "live-display-case.png")
    run(args.seed, args.dab_scale, False, img / "live-display-no-control.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
