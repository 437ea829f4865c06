"""Generated HER2 "slides": a positive-control region plus tumour fields of known score.

A slide is what the case workflow sees at the microscope: a few fields of the control tissue
(a homogeneous 3+ or a faint 1+), then tumour fields of chosen scores, and optionally returns
to tumour fields already seen (shifted by a few percent and exposed again). All fields share
one microscope, camera and stain batch (``FieldSpec.camera_seed`` = the slide's seed), a mild
fixed defocus and JPEG quality 92, and one stain-run strength (``dab_scale``), so tests can
check control validation, calibration on an under-stained run, pooling and duplicate handling.

The truth of every field is the drawn recipe (the intended score, independent of
``dab_scale``); :func:`slide_truth` pools the tumour cells of the distinct fields.

Command line::

    python -m tools.synth.her2_slide OUT_DIR --seed 1 --dab-scale 0.75 --tumour 2+,2+,3+ --again 1

writes ``c01.png``.., ``t01.png``.., ``t01_again.png`` and ``slide.json`` with the truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from appliance.assays.her2.rules import score_field
from appliance.assays.her2.types import FieldScore, MembraneClass
from appliance.config import RulesConfig
from tools.synth.her2_fields import (
    SCORES,
    CellTruth,
    FieldSpec,
    Scene,
    build_scene,
    field_score,
    render_scene,
)

CONTROL_PATTERNS = {"3+": "control_3plus", "1+": "control_1plus"}
SLIDE_DEFOCUS_UM = 0.3  # mildly soft, the same on every field of a slide
SLIDE_JPEG_QUALITY = 92
MAX_FIELDS = 64  # per role: a slide is a handful of fields, not a scan
# A return to a field lands a few percent away and under a slightly different exposure.
_SHIFT_FRACTION = (0.03, 0.08)
_EXPOSURE_DARKER = (0.85, 0.95)
_EXPOSURE_BRIGHTER = (1.04, 1.10)
# Distinct sub-streams of the slide seed for field seeds and for the returns.
_STREAM_CONTROL, _STREAM_TUMOUR, _STREAM_AGAIN = 1, 2, 3


@dataclass(frozen=True)
class SlideSpec:
    """What slide to generate. Field indices are 0-based; file names count from 1."""

    seed: int
    control_level: str = "3+"  # "3+" or "1+": the expected level of the control tissue
    control_fields: int = 3
    tumour_scores: tuple[str, ...] = ("2+",)  # one intended score per distinct tumour field
    dab_scale: float = 1.0  # stain-run strength applied to every field (control included)
    um_per_px: float = 0.5
    width: int = 800
    height: int = 600
    duplicates: tuple[int, ...] = ()  # tumour field indices shown a second time

    def __post_init__(self) -> None:
        problems = _slide_problems(self)
        if problems:
            raise ValueError("invalid SlideSpec: " + "; ".join(problems))


@dataclass(frozen=True)
class SlideField:
    """One generated view of the slide with its truth."""

    role: str  # "control" | "tumour"
    index: int  # 0-based within its role; a return has its original's index
    image: np.ndarray  # (H, W, 3) uint8 RGB
    truth: FieldSpec  # resolved spec of the field (a return: of its original)
    score: str | None  # truth score of the drawn recipe; None when not scorable
    category: str | None
    duplicate_of: int | None  # for a return: the tumour index it shows again, else None
    cells: tuple[CellTruth, ...]  # a return: its original's cells moved into its frame
    shift_px: tuple[int, int] = (0, 0)  # (dx, dy) of a return relative to its original
    exposure: float = 1.0  # light relative to the original (returns only differ)

    @property
    def name(self) -> str:
        """File stem: c01, t01, t01_again (numbers from 1)."""
        stem = f"{'c' if self.role == 'control' else 't'}{self.index + 1:02d}"
        return stem + ("_again" if self.duplicate_of is not None else "")


# ------------------------------------------------------------------------------ public API


def generate_slide(spec: SlideSpec) -> list[SlideField]:
    """All views of a slide: controls, then distinct tumour fields, then the returns."""
    controls = [_control_field(spec, i) for i in range(spec.control_fields)]
    tumours: list[SlideField] = []
    scenes: list[Scene] = []
    for i, score in enumerate(spec.tumour_scores):
        scene = build_scene(_field_spec(spec, _field_seed(spec.seed, _STREAM_TUMOUR, i),
                                        target_score=score))
        scenes.append(scene)
        tumours.append(_as_field("tumour", i, scene, render_scene(scene)))
    returns = [_return_field(spec, tumours[i], scenes[i]) for i in spec.duplicates]
    return controls + tumours + returns


def pooled_classes(fields: Sequence[SlideField]) -> list[MembraneClass]:
    """Truth membrane classes of the tumour cells of the distinct tumour fields.

    Returns to a field are left out: the same cells must not be counted twice.
    """
    return [c.membrane_class for f in fields
            if f.role == "tumour" and f.duplicate_of is None
            for c in f.cells if c.membrane_class is not None]


def slide_truth(fields: Sequence[SlideField],
                rules: RulesConfig | None = None) -> tuple[str | None, str | None]:
    """The case's true (score, category): the rules over the pooled tumour cells.

    (None, None) when the pooled cells are too few to score.
    """
    result = score_field(pooled_classes(fields), rules or RulesConfig())
    if isinstance(result, FieldScore):
        return result.score.value, result.category.value
    return None, None


def write_slide(fields: Sequence[SlideField], spec: SlideSpec, out_dir: Path) -> Path:
    """Write every view as ``<name>.png`` and the truth as ``slide.json``; returns the JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in fields:
        path = out_dir / f"{f.name}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
    score, category = slide_truth(fields)
    doc = {
        "slide": {**_spec_json(spec)},
        "truth": {"score": score, "category": category,
                  "tumour_cells": len(pooled_classes(fields))},
        "fields": [_field_json(f) for f in fields],
    }
    target = out_dir / "slide.json"
    target.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return target


# ---------------------------------------------------------------------------- construction


def _slide_problems(spec: SlideSpec) -> list[str]:
    """Every reason a slide spec cannot be generated, in words (empty when it is fine)."""
    p: list[str] = []
    if spec.seed < 0:
        p.append(f"seed {spec.seed} is negative")
    if spec.control_level not in CONTROL_PATTERNS:
        p.append(f"control_level {spec.control_level!r} is not one of "
                 f"{', '.join(CONTROL_PATTERNS)}")
    if not 0 <= spec.control_fields <= MAX_FIELDS:
        p.append(f"control_fields {spec.control_fields} is outside 0..{MAX_FIELDS}")
    if len(spec.tumour_scores) > MAX_FIELDS:
        p.append(f"{len(spec.tumour_scores)} tumour fields is more than {MAX_FIELDS}")
    bad = [s for s in spec.tumour_scores if s not in SCORES]
    if bad:
        p.append(f"tumour_scores {bad} are not among {', '.join(SCORES)}")
    if not 0.05 <= spec.dab_scale <= 3.0:
        p.append(f"dab_scale {spec.dab_scale} is outside 0.05..3")
    out = [i for i in spec.duplicates if not 0 <= i < len(spec.tumour_scores)]
    if out:
        p.append(f"duplicates {out} are not tumour field indices 0..{len(spec.tumour_scores) - 1}")
    if len(set(spec.duplicates)) != len(spec.duplicates):
        p.append(f"duplicates {spec.duplicates} repeat an index")
    try:
        # Size and scale are the fields' own rules: ask them now, not mid-generation.
        _field_spec(spec, 0)
    except ValueError as exc:
        p.append(str(exc))
    return p


def _field_seed(slide_seed: int, stream: int, index: int) -> int:
    """A field's scene seed: independent for every (slide, role, index)."""
    state = np.random.SeedSequence([slide_seed, stream, index]).generate_state(1, np.uint32)
    return int(state[0])


def _field_spec(spec: SlideSpec, seed: int, *, target_score: str | None = None,
                pattern: str | None = None) -> FieldSpec:
    """A field of this slide: its size, scale, stain run and the slide's camera."""
    return FieldSpec(seed=seed, width=spec.width, height=spec.height, um_per_px=spec.um_per_px,
                     target_score=target_score, pattern=pattern, defocus_um=SLIDE_DEFOCUS_UM,
                     jpeg_quality=SLIDE_JPEG_QUALITY, dab_scale=spec.dab_scale,
                     camera_seed=spec.seed)


def _as_field(role: str, index: int, scene: Scene, image: np.ndarray) -> SlideField:
    score, category = field_score(scene.cells)
    return SlideField(role=role, index=index, image=image, truth=scene.spec, score=score,
                      category=category, duplicate_of=None, cells=scene.cells)


def _control_field(spec: SlideSpec, index: int) -> SlideField:
    fs = _field_spec(spec, _field_seed(spec.seed, _STREAM_CONTROL, index),
                     pattern=CONTROL_PATTERNS[spec.control_level])
    scene = build_scene(fs)
    return _as_field("control", index, scene, render_scene(scene))


def _return_field(spec: SlideSpec, original: SlideField, scene: Scene) -> SlideField:
    """The original tumour field seen again: moved a few percent, exposed differently."""
    rng = np.random.default_rng([spec.seed, _STREAM_AGAIN, original.index])
    dx = _signed(rng, rng.uniform(*_SHIFT_FRACTION) * spec.width)
    dy = _signed(rng, rng.uniform(*_SHIFT_FRACTION) * spec.height)
    darker = rng.uniform() < 0.5
    exposure = float(rng.uniform(*(_EXPOSURE_DARKER if darker else _EXPOSURE_BRIGHTER)))
    image = render_scene(shift_scene(scene, dx, dy), exposure=exposure)
    return replace(original, image=image, duplicate_of=original.index,
                   cells=_moved_cells(original.cells, dx, dy, spec.width, spec.height),
                   shift_px=(dx, dy), exposure=exposure)


def _signed(rng: np.random.Generator, magnitude: float) -> int:
    return round(float(magnitude)) * (1 if rng.uniform() < 0.5 else -1)


def shift_scene(scene: Scene, dx: int, dy: int) -> Scene:
    """The scene as seen with the stage moved by (dx, dy) px: view pixel (x, y) shows the
    old (x + dx, y + dy).

    The strip that comes into view is the tissue mirrored at the old border (plausible
    tissue, no truth there): its nuclei and membranes get label 0.
    """
    return replace(
        scene,
        hematoxylin=_shifted(scene.hematoxylin, dx, dy, "reflect"),
        dab=_shifted(scene.dab, dx, dy, "reflect"),
        residual=_shifted(scene.residual, dx, dy, "reflect"),
        nucleus_labels=_shifted(scene.nucleus_labels, dx, dy, "constant"),
        membrane_owner=_shifted(scene.membrane_owner, dx, dy, "constant"),
        cells=_moved_cells(scene.cells, dx, dy, scene.spec.width, scene.spec.height),
    )


def _shifted(a: np.ndarray, dx: int, dy: int, mode: str) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]``, the border filled by ``mode`` (np.pad)."""
    h, w = a.shape
    if abs(dx) >= w or abs(dy) >= h:
        raise ValueError(f"shift ({dx}, {dy}) is not smaller than the field {w}x{h}")
    py, px = abs(dy), abs(dx)
    padded = np.pad(a, ((py, py), (px, px)), mode=mode)  # type: ignore[call-overload]
    return np.ascontiguousarray(padded[py + dy:py + dy + h, px + dx:px + dx + w])


def _moved_cells(cells: tuple[CellTruth, ...], dx: int, dy: int, width: int,
                 height: int) -> tuple[CellTruth, ...]:
    """Cells in the moved view's coordinates; those whose centre left the view are dropped."""
    moved = (replace(c, x=c.x - dx, y=c.y - dy) for c in cells)
    return tuple(c for c in moved if 0 <= c.x < width and 0 <= c.y < height)


# ------------------------------------------------------------------------------------ JSON


def _spec_json(spec: SlideSpec) -> dict[str, Any]:
    return {"seed": spec.seed, "control_level": spec.control_level,
            "control_fields": spec.control_fields, "tumour_scores": list(spec.tumour_scores),
            "dab_scale": spec.dab_scale, "um_per_px": spec.um_per_px, "width": spec.width,
            "height": spec.height, "duplicates": list(spec.duplicates),
            "defocus_um": SLIDE_DEFOCUS_UM, "jpeg_quality": SLIDE_JPEG_QUALITY}


def _field_json(f: SlideField) -> dict[str, Any]:
    classes = [c.membrane_class.value for c in f.cells if c.membrane_class is not None]
    counts = {m.value: classes.count(m.value) for m in MembraneClass}
    return {"file": f"{f.name}.png", "role": f.role, "index": f.index,
            "duplicate_of": f.duplicate_of, "score": f.score, "category": f.category,
            "pattern": f.truth.pattern, "target_score": f.truth.target_score,
            "field_seed": f.truth.seed, "tumour_cells": len(classes),
            "membrane_classes": counts, "shift_px": list(f.shift_px),
            "exposure": f.exposure}


# ------------------------------------------------------------------------------------- CLI


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.synth.her2_slide",
                                 description="Generate a HER2 slide: control + tumour fields.")
    ap.add_argument("out_dir", type=Path, help="folder for the PNGs and slide.json")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--control-level", default="3+", choices=sorted(CONTROL_PATTERNS))
    ap.add_argument("--control-fields", type=int, default=3)
    ap.add_argument("--tumour", default="2+,2+,3+",
                    help="comma-separated intended scores, one per tumour field")
    ap.add_argument("--dab-scale", type=float, default=1.0,
                    help="stain-run strength (0.75: an under-stained run)")
    ap.add_argument("--um-per-px", type=float, default=0.5)
    ap.add_argument("--width", type=int, default=800)
    ap.add_argument("--height", type=int, default=600)
    ap.add_argument("--again", default="",
                    help="comma-separated tumour field numbers (t01 = 1) to show again")
    return ap.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: generate one slide and write it; 2 on a bad argument."""
    args = _parse(argv)
    try:
        spec = SlideSpec(
            seed=args.seed, control_level=args.control_level,
            control_fields=args.control_fields,
            tumour_scores=tuple(s.strip() for s in args.tumour.split(",") if s.strip()),
            dab_scale=args.dab_scale, um_per_px=args.um_per_px, width=args.width,
            height=args.height, duplicates=tuple(i - 1 for i in _ints(args.again)),
        )
    except ValueError as exc:
        print(f"her2_slide: {exc}", file=sys.stderr)
        return 2
    fields = generate_slide(spec)
    path = write_slide(fields, spec, args.out_dir)
    score, category = slide_truth(fields)
    print(f"{len(fields)} views written to {args.out_dir}; slide truth {score} ({category}); "
          f"{path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
