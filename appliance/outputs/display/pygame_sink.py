"""A screen through pygame 2 (SDL2): HDMI without X (kmsdrm), a desktop window, or offscreen.

Threads: SDL's video calls must all come from one thread. Create the sink in the
display thread and call ``show`` and ``close`` from that thread only; any other
thread gets a DisplayError.

Environment: SDL reads its video driver from ``SDL_VIDEODRIVER`` when the display
starts. The sink sets it for ``kmsdrm`` and ``offscreen`` (``window`` lets SDL pick
X11 or Wayland), and sets ``SDL_NO_SIGNAL_HANDLERS=1`` so SDL does not turn SIGINT
and SIGTERM into its own quit events: the appliance maps those signals onto its
stop event. ``close`` puts back the values these two variables had before; nothing
else global is changed.

kmsdrm (the 7" HDMI screen with no desktop) needs:

* no X or Wayland session holding the screen, and no other DRM client (such as
  picamera2's DRM preview): only one program can be the DRM master;
* a user in the ``video`` and ``render`` groups (``/dev/dri/card*``, ``renderD*``),
  and ``input`` for the keyboard's events;
* an SDL built with the KMSDRM driver. The pygame 2.6.1 wheel for x86_64 bundles an
  SDL without it (checked here: its drivers are x11, wayland, offscreen, dummy); a
  distribution's ``python3-pygame`` uses the system SDL, which has it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import cv2
import numpy as np

from appliance.outputs.display.live import fit_rect
from appliance.outputs.display.sinks import DisplayError, SinkBase, check_rgb

DRIVERS = ("kmsdrm", "window", "offscreen")
WINDOW_SIZE = (1280, 720)
CAPTION = "Eyepiece"
_SDL_DRIVER = {"kmsdrm": "kmsdrm", "offscreen": "offscreen"}  # window: SDL's own choice

_KMSDRM_HINT = (
    "check that no X/Wayland session or other DRM client holds the screen, that the user "
    "is in the 'video' and 'render' groups, and that pygame's SDL has the kmsdrm driver "
    "(a distribution's python3-pygame has it; the x86_64 pip wheel does not)"
)


def import_pygame() -> Any:
    """The pygame module, or DisplayError naming the extra to install."""
    # pygame prints a greeting on import unless told not to; stdout may carry JSON lines.
    previous = os.environ.get("PYGAME_HIDE_SUPPORT_PROMPT")
    os.environ["PYGAME_HIDE_SUPPORT_PROMPT"] = "1"
    try:
        import pygame
    except ImportError as exc:
        raise DisplayError("the screen display needs pygame 2: pip install eyepiece[display]"
                           ) from exc
    finally:
        _restore_env({"PYGAME_HIDE_SUPPORT_PROMPT": previous})
    return pygame


def _set_env(values: dict[str, str]) -> dict[str, str | None]:
    """Set environment variables; returns their previous values (None: unset)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    return previous


def _restore_env(previous: dict[str, str | None]) -> None:
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class PygameSink(SinkBase):
    """Shows RGB pictures on a pygame display; see the module notes on threads and SDL.

    ``size`` (width, height): 0 means the screen's own mode (kmsdrm) or 1280x720
    (window, offscreen). ``wants_quit`` becomes True when the user closes the window.
    Raises DisplayError when pygame is missing or the display cannot be opened.
    """

    def __init__(self, driver: str, size: tuple[int, int] = (0, 0)) -> None:
        if driver not in DRIVERS:
            raise DisplayError(f"pygame display driver {driver!r} is not one of {DRIVERS}")
        if size[0] < 0 or size[1] < 0:
            raise DisplayError(f"pygame display size must not be negative, got {size}")
        self.driver = driver
        self._pg = import_pygame()
        if self._pg.display.get_init() and self._pg.display.get_surface() is not None:
            raise DisplayError("a pygame display is already open in this process; close it "
                               "first (SDL has one display per process)")
        self._thread = threading.get_ident()
        env = {"SDL_NO_SIGNAL_HANDLERS": "1"}
        if driver in _SDL_DRIVER:
            env["SDL_VIDEODRIVER"] = _SDL_DRIVER[driver]
        self._previous_env = _set_env(env)
        self.closed = False
        self._quit = False
        try:
            self._pg.display.init()
            self._screen = self._open_mode(size)
        except self._pg.error as exc:
            self._pg.display.quit()
            _restore_env(self._previous_env)
            self.closed = True
            hint = f"; {_KMSDRM_HINT}" if driver == "kmsdrm" else ""
            raise DisplayError(f"pygame cannot open the {driver} display: {exc}{hint}") from exc

    def _open_mode(self, size: tuple[int, int]) -> Any:
        pg = self._pg
        w, h = size
        if self.driver == "kmsdrm":
            # (0, 0) asks SDL for the screen's current mode.
            screen = pg.display.set_mode((w, h) if w and h else (0, 0), pg.FULLSCREEN)
            pg.mouse.set_visible(False)
            return screen
        screen = pg.display.set_mode((w or WINDOW_SIZE[0], h or WINDOW_SIZE[1]))
        pg.display.set_caption(CAPTION)
        return screen

    def _check_thread(self, what: str) -> None:
        if threading.get_ident() != self._thread:
            raise DisplayError(f"pygame display {what}() called from another thread than the "
                               f"one that opened it; SDL needs one thread for all its calls")

    @property
    def size(self) -> tuple[int, int] | None:
        """The screen's (width, height): compose pictures at this size."""
        return self._screen_size()

    def _screen_size(self) -> tuple[int, int]:
        w, h = self._screen.get_size()
        return int(w), int(h)

    @property
    def annotations_only(self) -> bool:
        return False

    @property
    def wants_quit(self) -> bool:
        return self._quit

    def show(self, picture: np.ndarray) -> None:
        """Put an RGB picture on the screen (letterboxed if not the screen's size)."""
        self._check_thread("show")
        if self.closed:
            raise DisplayError("pygame display: show() after close()")
        check_rgb(picture)
        picture = self._fit(picture)
        h, w = picture.shape[:2]
        # frombuffer takes (width, height) and rows of RGB bytes: numpy's (H, W, 3) order.
        surface = self._pg.image.frombuffer(np.ascontiguousarray(picture), (w, h), "RGB")
        self._screen.blit(surface, (0, 0))
        self._pg.display.flip()
        self._pump_events()

    def _fit(self, picture: np.ndarray) -> np.ndarray:
        sw, sh = self._screen_size()
        if picture.shape[:2] == (sh, sw):
            return picture
        x, y, w, h = fit_rect((picture.shape[1], picture.shape[0]), (0, 0, sw, sh))
        out = np.zeros((sh, sw, 3), dtype=np.uint8)
        out[y:y + h, x:x + w] = cv2.resize(picture, (w, h), interpolation=cv2.INTER_LINEAR)
        return out

    def _pump_events(self) -> None:
        # Reading the queue also keeps the window responsive to the desktop.
        for event in self._pg.event.get():
            if event.type == self._pg.QUIT:
                self._quit = True

    def close(self) -> None:
        """Close the display and restore the SDL variables; further calls do nothing."""
        if self.closed:
            return
        self._check_thread("close")
        self.closed = True
        try:
            self._pg.display.quit()
        finally:
            _restore_env(self._previous_env)
