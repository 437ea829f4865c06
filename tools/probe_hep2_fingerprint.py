"""Does the case's field fingerprint tell HEp-2 fields apart, and know one seen again?

    python -m tools.probe_hep2_fingerprint [--pairs 24]

A HEp-2 case counts a return to a field once (``casebook.link_field``: fingerprint
similarity at ``her2.case.duplicate_similarity``, 0.85, or more). The fingerprint was made
for brightfield fields; a fluorescence field is mostly dark background. For each pair of
generated fields of one pattern and objective (seeds 990000+, six patterns, 0.3 / 0.5 /
0.9 µm per px) it prints the similarity of the two different fields, and of one field with
itself under fresh read noise (sigma 3 grey levels), as a camera sees a field it comes back
to, and of that view come back 5% of the width off (and 2.5% of the height), as a stage
returns to a field. Generated fields only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from appliance.config import Config
from appliance.pipeline.field_memory import fingerprint, similarity
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

FIRST_SEED = 990_000
PATTERNS = ("homogeneous", "centromere", "negative", "golgi", "nucleolar_homogeneous",
            "cyto_fibrillar")
SCALES = (0.3, 0.5, 0.9)
NOISE_SIGMA = 3.0
WIDTH, HEIGHT = 800, 600
SHIFT = 0.05  # the stage comes back 5% of the width off (and half that down)


def _noisy(view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``view`` with fresh read noise, as the camera records it again."""
    noise = rng.normal(0.0, NOISE_SIGMA, view.shape)
    return np.clip(view.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def pair_similarities(pairs: int, *, first_seed: int = FIRST_SEED
                      ) -> tuple[list[float], list[float], list[float]]:
    """(different fields, one field seen again, one field seen again shifted) similarities
    of ``pairs`` pairs."""
    different, again, shifted = [], [], []
    dx, dy = round(SHIFT * WIDTH), round(SHIFT * HEIGHT / 2)
    for k in tqdm(range(pairs), desc="field pairs", unit="pair"):
        # Each field is drawn larger, so that a view shifted over it still sees cells.
        big, other = (generate_hep2_field(Hep2FieldSpec(
            seed=first_seed + 2 * k + i, width=WIDTH + dx, height=HEIGHT + dy,
            um_per_px=SCALES[k % len(SCALES)], patterns=((PATTERNS[k % len(PATTERNS)], 1.0),)
        )).image for i in (0, 1))
        a, b = big[:HEIGHT, :WIDTH], other[:HEIGHT, :WIDTH]
        rng = np.random.default_rng(first_seed + k)
        fa = fingerprint(a)
        different.append(similarity(fa, fingerprint(b)))
        again.append(similarity(fa, fingerprint(_noisy(a, rng))))
        shifted.append(similarity(fa, fingerprint(_noisy(big[dy:, dx:], rng))))
    return different, again, shifted


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=24)
    args = parser.parse_args(argv)
    different, again, shifted = pair_similarities(args.pairs)
    cut = Config().her2.case.duplicate_similarity
    print(f"threshold (her2.case.duplicate_similarity): {cut}")
    print(f"different fields:      max {max(different):.3f}, median {np.median(different):.3f}"
          f" ({sum(s >= cut for s in different)} of {len(different)} taken for a return)")
    for what, values in (("one field seen again", again),
                         (f"... {SHIFT:.0%} shifted", shifted)):
        print(f"{what + ':':22s} min {min(values):.3f}, median {np.median(values):.3f}"
              f" ({sum(s < cut for s in values)} of {len(values)} missed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
