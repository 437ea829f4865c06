"""The unit that flows out of every capture source."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Pixel formats that reach the box JPEG-compressed (Frame.pixel_format): fine detail and
# grey levels are not what the sensor saw (docs/hep2.md, "Cameras the generator does not
# draw"; docs/hep2-calibration.md).
COMPRESSED_FORMATS = ("MJPG",)


@dataclass(frozen=True)
class Frame:
    """One 8-bit RGB picture and where it came from.

    ``um_per_px`` is set only when the source knows the scale (a command, an
    objective reported by the user); otherwise the assay estimates it.
    """

    image: np.ndarray  # (H, W, 3) uint8, RGB order
    seq: int
    timestamp: float  # time.monotonic() at capture
    source: str  # file path or source id
    um_per_px: float | None = None
    # What the camera delivered before conversion to RGB (MJPG, YUYV, RGB888, BGR, file...).
    pixel_format: str = "RGB"
    # The camera's own word on its exposure: False when it did not take the configured
    # exposure and gain (the HEp-2 intensity is then relative); None when it cannot say.
    exposure_pinned: bool | None = None
    # The camera's word on a white balance asked fixed (source.auto_white_balance = false):
    # False when it did not hold it (the colour the HEp-2 wrong-stain check reads moves);
    # None when it was not asked, or the source cannot say.
    white_balance_held: bool | None = None

    def __post_init__(self) -> None:
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"Frame.image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}"
            )
        if self.um_per_px is not None and not self.um_per_px > 0:
            raise ValueError(f"Frame.um_per_px must be > 0, got {self.um_per_px}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, 3) of the RGB picture."""
        h, w, c = self.image.shape
        return int(h), int(w), int(c)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
