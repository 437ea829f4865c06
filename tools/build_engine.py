"""Build the TensorRT engine for the configured model on this device, and print its stamp.

    python -m tools.build_engine [--config /etc/eyepiece/config.toml] [--assay her2|hep2|all]
                                 [--if-needed | --force]

The model file is checked against its manifest first. Without ``--force`` an engine
whose stamp matches this box (TensorRT version, GPU, model sha256, precision, input
profile) is kept; a missing or mismatched one is rebuilt. ``--if-needed`` says so
explicitly, for the first-boot ``eyepiece-engine.service``. The engine is the one the
assay loads: precision ``int8`` builds from the manifest's symmetric ``int8_trt`` file,
and the HEp-2 classifier's profile spans 1 to the assay's batch of crops. ``--assay
all`` builds every assay's engine, so that ``set_assay`` never waits for a build.
Exit status: 0 built or current, 2 refused (bad config, tampered model, no
TensorRT/pycuda, build failed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.assays.hep2.assay import CLASSIFIER_BATCH as HEP2_BATCH
from appliance.assays.her2.assay import TENSORRT_INT8
from appliance.config import Config, ConfigError, load_config
from appliance.inference.engine_stamp import EngineStamp
from appliance.inference.manifest import ModelError, load_manifest, verify_model
from appliance.inference.tensorrt_backend import CudaApi, ensure_engine

ASSAYS = ("her2", "hep2")
# The largest batch each assay sends (None: an image model, profiled over its tiles).
# It is the engine's profile, so it must be the assay's own value or the assay rebuilds.
MAX_BATCH: dict[str, int | None] = {"her2": None, "hep2": HEP2_BATCH}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=None, help="config TOML (default: built-in defaults)")
    ap.add_argument("--assay", default=None, choices=(*ASSAYS, "all"),
                    help="whose engine to build (default: the config's assay)")
    ap.add_argument("--precision", default=None, choices=("int8", "fp32"),
                    help="default: inference.precision from the config")
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--if-needed", action="store_true",
                      help="build only when the engine is missing or its stamp differs (default)")
    when.add_argument("--force", action="store_true", help="rebuild even if the engine is current")
    return ap.parse_args(argv)


def engine_precision(precision: str) -> str:
    """The manifest file TensorRT builds from, as the assays choose it for this backend."""
    return TENSORRT_INT8 if precision == "int8" else precision


def build_one(cfg: Config, assay: str, precision: str, cuda: CudaApi, *,
              force: bool) -> tuple[Path, EngineStamp, bool]:
    """Verify one assay's model file and build its engine unless a current one exists."""
    manifest = load_manifest(cfg.models_path() / assay)
    onnx_path = verify_model(manifest, precision)
    return ensure_engine(cfg, manifest, precision, onnx_path, cuda, force=force,
                         max_batch=MAX_BATCH[assay])


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or keep) the engine(s); print each path and stamp."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
        precision = engine_precision(args.precision or cfg.inference.precision)
        assays = ASSAYS if args.assay == "all" else (args.assay or cfg.assay,)
        cuda = CudaApi()
        try:
            done = [build_one(cfg, assay, precision, cuda, force=args.force)
                    for assay in assays]
        finally:
            cuda.close()
    except (ConfigError, ModelError, OSError) as exc:
        print(f"build_engine: {exc}", file=sys.stderr)
        return 2
    for engine, stamp, built in done:
        print(f"{'built' if built else 'current'}: {engine}")
        print(stamp.to_json(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
