#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Eyepiece on a Jetson (JetPack 6, Ubuntu 22.04): from a flashed board to an enabled service.
# Idempotent: a second run changes nothing. --dry-run prints every command instead.
# See docs/deploy.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
. "$HERE/../common.sh"

parse_args "$0" "$HERE/../.." "$@"
require_root

# --- the right device -------------------------------------------------------------------------
# JetPack's TensorRT, CUDA and GStreamer OpenCV are what this script builds on; on anything else
# the install would succeed and the service fail at start, so stop here instead.
if [[ "$FORCE" != 1 ]]; then
    [[ -f "$(rooted /etc/nv_tegra_release)" ]] \
        || die "no /etc/nv_tegra_release: not a Jetson (use --force to install anyway)"
fi
[[ "$DRY_RUN" == 1 ]] && log "dry run: nothing is changed; source $SRC_DIR"

# --- system packages --------------------------------------------------------------------------
# python3-opencv is JetPack's build, with GStreamer (nvarguscamerasrc); python3-dev and
# build-essential compile pycuda against JetPack's CUDA; mosquitto-clients is for checking the
# box by hand (mosquitto_sub), not needed by the service.
apt_install python3-venv python3-pip python3-dev build-essential python3-opencv \
    python3-libgpiod mosquitto-clients

# --- the service user and folders -------------------------------------------------------------
ensure_user video render gpio
make_dirs

# --- Python -----------------------------------------------------------------------------------
make_venv
log "pip install ${SRC_DIR}[jetson]"
# nvcc is not on root's PATH on JetPack; pycuda's build needs it and the CUDA headers.
export PATH="/usr/local/cuda/bin:$PATH" CUDA_ROOT="/usr/local/cuda"
run "$(rooted "$VENV_DIR")/bin/python" -m pip install --quiet --upgrade pip
# numpy<2: JetPack's cv2 and TensorRT are built against numpy 1.x.
pip_install "numpy>=1.25,<2" "${SRC_DIR}[jetson]"
# The PyPI OpenCV wheel has no GStreamer and would hide JetPack's; remove it so that `import cv2`
# finds the system one (pip re-adds it on every install as a dependency, so this runs each time).
run "$(rooted "$VENV_DIR")/bin/python" -m pip uninstall --quiet --yes opencv-python-headless
if [[ "$DRY_RUN" != 1 ]]; then
    # Prove it: the CSI camera needs GStreamer, TensorRT must be importable from the venv.
    "$(rooted "$VENV_DIR")/bin/python" - <<'EOF' || die "the venv does not see JetPack's OpenCV/TensorRT"
import re, sys
import cv2, tensorrt
info = cv2.getBuildInformation()
if not re.search(r"GStreamer:\s+YES", info):
    sys.exit(f"cv2 {cv2.__version__} from {cv2.__file__} has no GStreamer")
print(f"cv2 {cv2.__version__} with GStreamer, TensorRT {tensorrt.__version__}")
EOF
fi

# --- models, config, devices, units -----------------------------------------------------------
install_models
write_default_config "inference backend \"tensorrt\""
install_udev_rule
install_units eyepiece-engine.service eyepiece.service

log "done: start now with: systemctl start eyepiece.service   (docs/deploy.md: checking the box)"
