"""Writing a file so that a reader never sees half of it, even across a power cut."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, durable: bool = True, mode: int = 0o644,
                 make_parents: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader sees the old content or the new, never part of one. ``durable`` also
    fsyncs before the rename (what a power cut must not lose); a file rewritten
    every second (the live picture) skips it, to spare the SD card. ``mode`` because
    mkstemp makes files private (0600) and these are for other processes to read.
    ``make_parents=False`` leaves a missing folder an error (OSError) for the caller.
    """
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
