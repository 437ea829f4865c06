"""Build the TensorRT engine for the configured model on this device, and print its stamp.

    python -m tools.build_engine [--config /etc/eyepiece/config.toml] [--if-needed | --force]

The model file is checked against its manifest first. Without ``--force`` an engine
whose stamp matches this box (TensorRT version, GPU, model sha256, precision) is kept;
a missing or mismatched one is rebuilt. ``--if-needed`` says so explicitly, for the
first-boot ``eyepiece-engine.service``. Exit status: 0 built or current, 2 refused
(bad config, tampered model, no TensorRT/pycuda, build failed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from appliance.config import ConfigError, load_config
from appliance.inference.manifest import ModelError, load_manifest, verify_model
from appliance.inference.tensorrt_backend import CudaApi, ensure_engine


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=None, help="config TOML (default: built-in defaults)")
    ap.add_argument("--precision", default=None, choices=("int8", "fp32"),
                    help="default: inference.precision from the config")
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--if-needed", action="store_true",
                      help="build only when the engine is missing or its stamp differs (default)")
    when.add_argument("--force", action="store_true", help="rebuild even if the engine is current")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or keep) the engine; print its path and stamp."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
        precision = args.precision or cfg.inference.precision
        manifest = load_manifest(cfg.models_path() / cfg.assay)
        onnx_path = verify_model(manifest, precision)
        cuda = CudaApi()
        try:
            engine, stamp, built = ensure_engine(cfg, manifest, precision, onnx_path, cuda,
                                                 force=args.force)
        finally:
            cuda.close()
    except (ConfigError, ModelError, OSError) as exc:
        print(f"build_engine: {exc}", file=sys.stderr)
        return 2
    print(f"{'built' if built else 'current'}: {engine}")
    print(stamp.to_json(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
