"""Model manifests: what a shipped model is, and proof that the file is the one we shipped."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ModelError(RuntimeError):
    """A model is missing, tampered with, or its manifest is malformed."""


@dataclass(frozen=True)
class InputSpec:
    """How the model wants its input: NCHW float32 RGB, (x/255 - mean) / std."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    multiple_of: int  # H and W must be multiples of this
    um_per_px_range: tuple[float, float]  # working scales seen in training


@dataclass(frozen=True)
class ModelManifest:
    """One assay's model as described by models/<assay>/manifest.json."""

    name: str
    assay: str
    directory: Path
    files: dict[str, tuple[str, str]]  # precision -> (file name, sha256)
    input: InputSpec
    output_name: str
    classes: tuple[str, ...]
    output_stride: int
    validated_on: str
    raw: dict[str, Any]

    def model_path(self, precision: str) -> Path:
        """Path of the model file for ``precision`` (``int8`` or ``fp32``)."""
        if precision not in self.files:
            raise ModelError(
                f"model {self.name}: no {precision!r} file in the manifest "
                f"(has {', '.join(sorted(self.files))})"
            )
        return self.directory / self.files[precision][0]

    def sha256(self, precision: str) -> str:
        self.model_path(precision)
        return self.files[precision][1]


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(data: dict[str, Any], key: str, where: Path) -> Any:
    if key not in data:
        raise ModelError(f"{where}: manifest has no '{key}'")
    return data[key]


def load_manifest(directory: Path) -> ModelManifest:
    """Read and check ``directory/manifest.json`` (not the model files; see verify_model)."""
    path = directory / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"no model manifest at {path}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model manifest {path}: {exc}") from exc
    try:
        inp = _require(data, "input", path)
        out = _require(data, "output", path)
        files = {
            prec: (str(entry["path"]), str(entry["sha256"]))
            for prec, entry in _require(data, "files", path).items()
        }
        lo, hi = inp["um_per_px_range"]
        return ModelManifest(
            name=str(_require(data, "name", path)),
            assay=str(_require(data, "assay", path)),
            directory=directory,
            files=files,
            input=InputSpec(
                name=str(inp["name"]),
                mean=tuple(float(v) for v in inp["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in inp["std"]),  # type: ignore[arg-type]
                multiple_of=int(inp["multiple_of"]),
                um_per_px_range=(float(lo), float(hi)),
            ),
            output_name=str(out["name"]),
            classes=tuple(str(c) for c in out["classes"]),
            output_stride=int(out["stride"]),
            validated_on=str(_require(data, "validated_on", path)),
            raw=data,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed manifest ({exc!r})") from exc


def verify_model(manifest: ModelManifest, precision: str) -> Path:
    """Return the model file's path after checking that its sha256 matches the manifest.

    A model that is missing or differs by one byte is refused: the box must never
    score a patient's field with a model nobody validated.
    """
    path = manifest.model_path(precision)
    if not path.is_file():
        raise ModelError(f"model file {path} is missing")
    actual = file_sha256(path)
    expected = manifest.sha256(precision)
    if actual != expected:
        raise ModelError(
            f"model file {path} does not match its manifest (sha256 {actual[:16]}…, "
            f"expected {expected[:16]}…): refusing a tampered or corrupt model"
        )
    return path
