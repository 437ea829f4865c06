"""A simulated slide session (``synthetic[:SEED]``): fields held still, stage moves, revisits.

Fields come from the HER2 field generator (``tools.synth.her2_fields``, imported when
the source is opened; it needs only numpy and OpenCV). A pool of ``fields`` distinct
fields is generated on demand and cached. The session shows a field still for
``hold_s``, then moves the stage for about ``move_s`` to the next field: each move
frame is the two neighbouring fields side by side, translated a little further with
``cv2.warpAffine`` (sub-pixel), so a motion detector sees real motion. After every
third new field the stage goes back to an earlier one (a revisit).

Everything is counted in frames at the nominal rate (``fps``, or 10 when ``fps`` is
0, which means "as fast as read() is called"), so :attr:`SyntheticSource.plan` says
exactly which frame shows what. All fields share one scale (one objective), but
``um_per_px`` is left unset on frames: the appliance estimates it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import cv2
import numpy as np

from appliance.capture.frame import Frame
from appliance.capture.replay import Pacer
from appliance.capture.source import EndOfStream, SourceError, SourceFault

DEFAULT_SIZE = (1280, 960)  # width, height
NOMINAL_FPS_WHEN_UNPACED = 10.0
REVISIT_EVERY = 3
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # stage moves right, left, down, up


_Point = tuple[float, float]


class Step(NamedTuple):
    """One stretch of the session: a field held still, or a move towards ``field``."""

    field: int  # the field in view (hold) or arriving (move)
    phase: str  # "hold" or "move"
    frames: int
    origin: int  # the field left behind (a move); the field itself for a hold
    direction: tuple[int, int]  # where the new field lies (dx, dy in field widths/heights)


def visit_order(fields: int, rng: np.random.Generator) -> list[int]:
    """Fields in the order they are looked at: 0, 1, 2, an earlier one, 3, 4, 5, ..."""
    order: list[int] = []
    for i in range(fields):
        order.append(i)
        if (i + 1) % REVISIT_EVERY == 0:
            order.append(int(rng.integers(0, i)))  # any earlier field but the current one
    return order


def session_plan(fields: int, *, seed: int, hold: int, move: int, loop: bool) -> list[Step]:
    """The steps of one pass; with ``loop`` a last move returns to the first field."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    order = visit_order(fields, rng)
    if loop and order[-1] != order[0]:
        order.append(order[0])
    steps: list[Step] = []
    for k, field in enumerate(order):
        if k > 0:
            direction = _DIRECTIONS[int(rng.integers(0, len(_DIRECTIONS)))]
            steps.append(Step(field, "move", move, order[k - 1], direction))
        if not (loop and k == len(order) - 1 and k > 0 and field == order[0]):
            steps.append(Step(field, "hold", hold, field, (0, 0)))
    return steps


def stage_strip(origin: np.ndarray, target: np.ndarray, direction: tuple[int, int]
                ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """The two fields side by side as the stage sees them, and the view's start and end.

    ``target`` lies next to ``origin`` in ``direction``; offsets are the (x, y) of the
    view's top-left corner in the strip, at the origin and at the target.
    """
    h, w = origin.shape[:2]
    dx, dy = direction
    if dx:
        strip = np.hstack([origin, target] if dx > 0 else [target, origin])
        return strip, ((0.0, 0.0) if dx > 0 else (float(w), 0.0)), \
            ((float(w), 0.0) if dx > 0 else (0.0, 0.0))
    strip = np.vstack([origin, target] if dy > 0 else [target, origin])
    return strip, ((0.0, 0.0) if dy > 0 else (0.0, float(h))), \
        ((0.0, float(h)) if dy > 0 else (0.0, 0.0))


def view_of(strip: np.ndarray, offset: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """The (width, height) window of ``strip`` at a sub-pixel ``offset`` (bilinear)."""
    shift = np.array([[1.0, 0.0, -offset[0]], [0.0, 1.0, -offset[1]]], np.float32)
    return np.ascontiguousarray(cv2.warpAffine(strip, shift, size, flags=cv2.INTER_LINEAR,
                                               borderMode=cv2.BORDER_REPLICATE))


def move_frame(origin: np.ndarray, target: np.ndarray, direction: tuple[int, int],
               progress: float) -> np.ndarray:
    """The view ``progress`` (0..1) of the way from ``origin`` to ``target``."""
    strip, start, end = stage_strip(origin, target, direction)
    return view_of(strip, _between(start, end, progress), (origin.shape[1], origin.shape[0]))


def _between(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    """The point a fraction ``t`` of the way from ``a`` to ``b``."""
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


class SyntheticSource:
    """Frames of a simulated slide session; see the module docstring."""

    def __init__(self, seed: int = 0, *, width: int = 0, height: int = 0, fps: float = 10.0,
                 hold_s: float = 2.0, loop: bool = False, fields: int = 6,
                 move_s: float = 0.6, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if seed < 0:
            raise SourceError(f"synthetic source: seed {seed} is negative")
        if fields < 1:
            raise SourceError(f"synthetic source: needs at least 1 field, got {fields}")
        self.seed = seed
        self.source_id = f"synthetic:{seed}"
        self.width, self.height = (width or DEFAULT_SIZE[0]), (height or DEFAULT_SIZE[1])
        if not (32 <= self.width <= 8192 and 32 <= self.height <= 8192):
            raise SourceError(f"synthetic source: size {self.width}x{self.height} is outside "
                              "32..8192 pixels")
        nominal = fps if fps > 0 else NOMINAL_FPS_WHEN_UNPACED
        self.plan = session_plan(fields, seed=seed, hold=max(1, round(hold_s * nominal)),
                                 move=max(1, round(move_s * nominal)), loop=loop)
        self.fields = fields
        self.loop = loop
        self._pacer = Pacer(fps, clock=clock, sleep=sleep)
        self._um_per_px = _session_scale(seed)
        self._generate: Callable[[Any], Any] | None = None
        self._spec: Any = None
        self._cache: dict[int, np.ndarray] = {}
        # The strip of the move in progress: (step index, strip, start, end).
        self._strip: tuple[int, np.ndarray, _Point, _Point] | None = None
        self._opened = False
        self._seq = 0
        self._step = 0
        self._frame_in_step = 0

    @property
    def frames_per_pass(self) -> int:
        """Frames one pass of the plan delivers."""
        return sum(step.frames for step in self.plan)

    def open(self) -> None:
        """Load the field generator (no-op when open); SourceError when it is missing."""
        if self._opened:
            return
        try:
            from tools.synth.her2_fields import FieldSpec, generate_field
        except ImportError as exc:
            raise SourceError(
                "synthetic source: the field generator tools/synth is not importable "
                f"({exc}); run from an Eyepiece source checkout"
            ) from exc
        self._generate, self._spec = generate_field, FieldSpec
        self._opened = True

    def read(self) -> Frame:
        """The next frame of the session (paced at fps), or EndOfStream after one pass."""
        if not self._opened:
            raise SourceFault(f"{self.source_id} is not open")
        if self._step >= len(self.plan):
            if not self.loop:
                raise EndOfStream(f"{self.source_id}: session of {self.fields} fields done")
            self._step = 0
        step = self.plan[self._step]
        image = self._picture(self._step, self._frame_in_step)
        self._frame_in_step += 1
        if self._frame_in_step >= step.frames:
            self._step, self._frame_in_step = self._step + 1, 0
        now = self._pacer.wait()
        self._seq += 1
        return Frame(image=image, seq=self._seq, timestamp=now, source=self.source_id,
                     pixel_format="RGB")

    def close(self) -> None:
        """Stop the session (idempotent); the generated fields stay cached."""
        self._opened = False
        self._step = self._frame_in_step = 0
        self._strip = None

    def field_image(self, index: int) -> np.ndarray:
        """The still picture of field ``index`` (generated once, then cached; read-only)."""
        if not 0 <= index < self.fields:
            raise IndexError(f"field {index} is outside 0..{self.fields - 1}")
        if index not in self._cache:
            self.open()
            assert self._generate is not None and self._spec is not None
            spec = self._spec(seed=_field_seed(self.seed, index), width=self.width,
                              height=self.height, um_per_px=self._um_per_px)
            image = np.ascontiguousarray(self._generate(spec).image)
            image.flags.writeable = False  # shared by every frame of its holds
            self._cache[index] = image
        return self._cache[index]

    def _picture(self, index: int, k: int) -> np.ndarray:
        """What frame ``k`` of step ``index`` shows."""
        step = self.plan[index]
        if step.phase == "hold":
            self._strip = None
            return self.field_image(step.field)
        if self._strip is None or self._strip[0] != index:
            strip, start, end = stage_strip(self.field_image(step.origin),
                                            self.field_image(step.field), step.direction)
            self._strip = (index, strip, start, end)
        _, strip, start, end = self._strip
        progress = (k + 1) / (step.frames + 1)  # never exactly either field
        return view_of(strip, _between(start, end, progress), (self.width, self.height))


def _field_seed(seed: int, index: int) -> int:
    """Independent, well-mixed seed of one field of a session."""
    return int(np.random.SeedSequence([seed, 0, index]).generate_state(1)[0])


def _session_scale(seed: int) -> float:
    """One objective for the session: µm per pixel log-uniform in [0.25, 1.0] (40x..10x)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    return float(np.exp(rng.uniform(np.log(0.25), np.log(1.0))))
