"""The stamp of a TensorRT engine: what it was built from and for, kept beside the engine file.

A serialized engine is only valid for the TensorRT version and GPU it was built on, and
only means anything for the model it was built from. The stamp records those facts; an
engine whose stamp is missing, unreadable or different from what this box expects is
rebuilt, never loaded. Everything here is pure (no TensorRT, no CUDA) so it is tested
on any machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from appliance.files import write_atomic
from appliance.inference.manifest import ModelManifest

STAMP_SUFFIX = ".stamp.json"


@dataclass(frozen=True)
class EngineStamp:
    """The facts that must all match for an engine file to be loaded."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" for Jetson Orin
    model_sha256: str
    precision: str  # the shipped model it was built from: int8 or fp32
    # The optimisation profile, "min..opt..max" NCHW; a larger tile needs a new engine.
    input_profile: str

    def to_json(self) -> str:
        """The stamp as stable, human-readable JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def stamp_from_json(text: str) -> EngineStamp:
    """Parse a stamp; raises ValueError naming what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"stamp is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError("stamp is not a JSON object")
    names = [f.name for f in fields(EngineStamp)]
    missing = [n for n in names if not isinstance(data.get(n), str)]
    if missing:
        raise ValueError(f"stamp lacks text field(s) {', '.join(missing)}")
    return EngineStamp(**{n: data[n] for n in names})


def engine_path(engine_dir: Path, manifest: ModelManifest, precision: str) -> Path:
    """Where the engine for this model and precision lives.

    The model's sha256 is in the name, so a replaced model never finds the old engine
    (its stamp would refuse it anyway) and both can sit side by side during an update.
    """
    sha = manifest.sha256(precision)
    return engine_dir / f"{manifest.name}-{precision}-{sha[:12]}.engine"


def stamp_path(engine: Path) -> Path:
    """The stamp file beside ``engine``."""
    return engine.with_name(engine.name + STAMP_SUFFIX)


def read_stamp(engine: Path) -> tuple[EngineStamp | None, str]:
    """The stamp beside ``engine``, or None and the reason it cannot be used."""
    path = stamp_path(engine)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"no stamp {path.name}"
    except OSError as exc:
        return None, f"cannot read stamp {path}: {exc.strerror or exc}"
    try:
        return stamp_from_json(text), ""
    except ValueError as exc:
        return None, f"{path.name}: {exc}"


def stamp_matches(stamp: EngineStamp | None, expected: EngineStamp) -> tuple[bool, str]:
    """Whether ``stamp`` is the one expected; if not, the first difference in words."""
    if stamp is None:
        return False, "no stamp"
    for f in fields(EngineStamp):
        have, want = getattr(stamp, f.name), getattr(expected, f.name)
        if have != want:
            return False, f"{f.name} is {have!r}, this box needs {want!r}"
    return True, "stamp matches"


def engine_is_current(engine: Path, expected: EngineStamp) -> tuple[bool, str]:
    """Whether ``engine`` exists and its stamp matches: loadable as it is, or why not."""
    if not engine.is_file():
        return False, f"no engine {engine}"
    stamp, reason = read_stamp(engine)
    if stamp is None:
        return False, reason
    return stamp_matches(stamp, expected)


def write_engine(engine: Path, serialized: bytes, stamp: EngineStamp) -> None:
    """Store an engine and then its stamp; the stamp is the commit mark.

    The old stamp goes first: if the box dies between the two writes, the engine has no
    stamp and is rebuilt at the next start instead of being trusted.
    """
    stamp_path(engine).unlink(missing_ok=True)
    write_atomic(engine, serialized)
    write_atomic(stamp_path(engine), stamp.to_json().encode("utf-8"))
