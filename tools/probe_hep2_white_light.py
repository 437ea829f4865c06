"""Probe the HEp-2 white-light test: brightfield views against FITC fields through cameras.

    python -m tools.probe_hep2_white_light [--her2-fields 12] [--fitc-seed 770500]
                                           [--fitc-fields 21]

The HEp-2 quality gate refuses a brightfield image by its bright background (every
channel's median above 80 grey). Where dense tissue fills the view, pink and brown absorb
green and the median falls under 80; the brightest light is then still the lamp's white.
This prints, for the brightest 2 % of the pixels, the dimmest channel's grey and its
balance (dimmest over brightest channel):

- **brightfield**: generated HER2 fields (``tools.make_samples``' specs, seed 11) at
  640x480 and at 96x64 (the test suite's sample size), whole, halves, quarters and 96x64
  crops from three corners each; how many escape the median test, and how the
  white-light test (``quality.is_white_light``) reads them;
- **FITC**: one generated HEp-2 specimen of each kind of the eval's plan (seeds from
  770500) through the stress tool's camera looks; the highest grey and balance seen.

The limits in ``appliance/assays/hep2/quality.py`` (WHITE_MIN_GREY, WHITE_BALANCE) were set
from its first run. Generated images only.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.quality import (
    BRIGHTFIELD_MEDIAN,
    WHITE_MIN_GREY,
    brightest_colour,
    is_white_light,
)
from tools.eval_hep2 import specimen_cases
from tools.make_samples import sample_specs
from tools.stress_hep2 import LOOKS
from tools.synth.hep2_fields import generate_hep2_field
from tools.synth.her2_fields import generate_field

FITC_LOOKS = ("as_drawn", "gamma_2.2", "mjpg_q75", "noisy", "long_pass", "stray_light",
              "colour_mosaic")


def views(image: np.ndarray) -> Iterator[np.ndarray]:
    """The whole image, its halves and quarters and 96x64 crops, from three corners."""
    h, w = image.shape[:2]
    for ch, cw in ((h, w), (h // 2, w // 2), (h // 4, w // 4), (64, 96)):
        if min(ch, cw) < 32:
            continue
        for y, x in ((0, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)):
            yield np.ascontiguousarray(image[y:y + ch, x:x + cw])


def grey_and_balance(rgb: np.ndarray) -> tuple[float, float]:
    """The brightest light's dimmest channel, and its share of the brightest channel."""
    top = brightest_colour(rgb)
    return min(top), min(top) / max(max(top), 1e-6)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m tools.probe_hep2_white_light",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--her2-fields", type=int, default=12)
    ap.add_argument("--fitc-seed", type=int, default=770_500)
    ap.add_argument("--fitc-fields", type=int, default=21,
                    help="the first N specimens of the eval's plan (21: one of each kind)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print both sides' figures."""
    args = parse_args(argv)
    bright = []
    # Full-size fields, and the 96x64 ones the test suite's samples are (one of those, dense
    # 3+ tissue, was the field the gate let through).
    specs = sample_specs(args.her2_fields, 11, 640, 480) + sample_specs(args.her2_fields, 11,
                                                                         96, 64)
    for spec in tqdm(specs, desc="HER2 fields"):
        for view in views(generate_field(spec).image):
            medians = np.median(view.reshape(-1, 3), axis=0)
            top = brightest_colour(view)
            bright.append((float(medians.min()), *grey_and_balance(view), is_white_light(top)))
    b = np.array(bright, dtype=np.float64)
    escaped = b[b[:, 0] <= BRIGHTFIELD_MEDIAN]
    print(f"brightfield: {len(b)} views; brightest light's dimmest channel >= {b[:, 1].min():.0f} "
          f"grey, balance >= {b[:, 2].min():.3f}")
    print(f"  {len(escaped)} escape the median test; the white-light test refuses "
          f"{int(escaped[:, 3].sum())} of them and {int(b[:, 3].sum())} of all")
    fitc: dict[str, list[tuple[float, float, bool]]] = {name: [] for name in FITC_LOOKS}
    cases = specimen_cases(1, first_seed=args.fitc_seed)[:args.fitc_fields]
    for case in tqdm(cases, desc="FITC fields"):
        field = generate_hep2_field(case.spec)
        for name in FITC_LOOKS:
            look = LOOKS[name][0]
            rgb = field.image if look is None else look(field.image, field.um_per_px)
            fitc[name].append((*grey_and_balance(rgb), is_white_light(brightest_colour(rgb))))
    for name, rows in fitc.items():
        a = np.array(rows, dtype=np.float64)
        bright_enough = a[a[:, 0] >= WHITE_MIN_GREY]
        at_grey = (f"{bright_enough[:, 1].max():.3f}" if len(bright_enough) else "-")
        print(f"FITC {name:14s} dimmest channel <= {a[:, 0].max():6.1f} grey, balance <= "
              f"{a[:, 1].max():.3f} ({at_grey} where >= {WHITE_MIN_GREY:g} grey), taken for "
              f"white: {int(a[:, 2].sum())} of {len(a)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
