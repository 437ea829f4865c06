#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Eyepiece on a Raspberry Pi (Raspberry Pi OS bookworm, 64-bit): from a fresh card to an enabled
# service. ONNX Runtime on the CPU; there is no TensorRT and so no engine unit.
# Idempotent: a second run changes nothing. --dry-run prints every command instead.
# See docs/deploy.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
. "$HERE/../common.sh"

parse_args "$0" "$HERE/../.." "$@"
require_root

# --- the right device -------------------------------------------------------------------------
# picamera2 and the kmsdrm pygame come from the Raspberry Pi apt repository only.
if [[ "$FORCE" != 1 ]]; then
    grep -qs "Raspberry Pi" "$(rooted /proc/device-tree/model)" \
        || die "/proc/device-tree/model does not name a Raspberry Pi (use --force to install anyway)"
    grep -qs 'VERSION_CODENAME=bookworm' "$(rooted /etc/os-release)" \
        || die "not Raspberry Pi OS bookworm (/etc/os-release); use --force to install anyway"
fi
[[ "$DRY_RUN" == 1 ]] && log "dry run: nothing is changed; source $SRC_DIR"

# --- system packages --------------------------------------------------------------------------
# python3-picamera2: the CSI camera (libcamera); python3-pygame: the distribution's build has
# SDL's kmsdrm driver, the PyPI wheel does not; mosquitto-clients: for checking by hand.
apt_install python3-venv python3-pip python3-picamera2 python3-pygame python3-libgpiod \
    mosquitto-clients

# --- the service user and folders -------------------------------------------------------------
ensure_user video render gpio
make_dirs

# --- Python -----------------------------------------------------------------------------------
make_venv
log "pip install ${SRC_DIR}[pi] and onnxruntime"
run "$(rooted "$VENV_DIR")/bin/python" -m pip install --quiet --upgrade pip
# numpy<2: apt's picamera2 and simplejpeg are built against bookworm's numpy 1.x. onnxruntime
# comes from PyPI (aarch64 wheels); the `pi` extra adds gpiod v2 (bookworm's apt one is v1).
pip_install "numpy>=1.25,<2" onnxruntime "${SRC_DIR}[pi]"
if [[ "$DRY_RUN" != 1 ]]; then
    "$(rooted "$VENV_DIR")/bin/python" -c "import picamera2, onnxruntime, pygame, gpiod" \
        || die "the venv cannot import picamera2/onnxruntime/pygame/gpiod"
fi

# --- models, config, devices, units -----------------------------------------------------------
install_models
# shellcheck disable=SC2119  # a Pi needs no settings beyond the defaults
write_default_config
install_udev_rule
install_units eyepiece.service

log "done: start now with: systemctl start eyepiece.service   (docs/deploy.md: checking the box)"
