# shellcheck shell=bash
# Eyepiece device install: helpers shared by deploy/jetson/install.sh and deploy/pi/install.sh.
# Sourced, never run. Every step that changes the machine goes through `run` (or a helper that
# uses it) so that --dry-run prints the whole plan, in order, and touches nothing.
#
# Environment:
#   EYEPIECE_ROOT  prefix for every path written (default empty = the real /). The tests set it
#                  to a temporary folder so that nothing on the test machine is touched.

EYEPIECE_ROOT="${EYEPIECE_ROOT:-}"
EYEPIECE_USER="eyepiece"
# Paths as the running service sees them (written into the config and the units).
OPT_DIR="/opt/eyepiece"
VENV_DIR="$OPT_DIR/venv"
MODELS_DIR="$OPT_DIR/models"
CONF_DIR="/etc/eyepiece"
CONF_FILE="$CONF_DIR/eyepiece.toml"
CRED_DIR="$CONF_DIR/credentials"
STATE_DIR="/var/lib/eyepiece"
UDEV_RULE="/etc/udev/rules.d/99-eyepiece.rules"
UNIT_DIR="/etc/systemd/system"

DRY_RUN=0
# shellcheck disable=SC2034  # read by the install scripts that source this file
FORCE=0
SRC_DIR=""

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

# The path on disk for a path as the service sees it.
rooted() { printf '%s%s' "$EYEPIECE_ROOT" "$1"; }

# Run a command, or print it (shell-quoted, so it can be pasted) with --dry-run.
run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        local quoted
        printf -v quoted '%q ' "$@"
        printf '+ %s\n' "${quoted% }"
    else
        "$@"
    fi
}

usage() {
    cat <<EOF
usage: $1 [--dry-run] [--force] [SOURCE_DIR]

Install Eyepiece from SOURCE_DIR (a checkout; default: the repository holding this script).
  --dry-run  print every command instead of running it
  --force    skip the check that this is the right kind of device
Environment: EYEPIECE_ROOT=DIR writes every file under DIR (for tests).
EOF
}

# Parse the command line shared by both scripts; sets DRY_RUN, FORCE, SRC_DIR.
# shellcheck disable=SC2034  # FORCE is read by the install scripts that source this file
parse_args() {
    local prog="$1" default_src="$2"
    shift 2
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --force) FORCE=1 ;;
            -h|--help) usage "$prog"; exit 0 ;;
            -*) usage "$prog" >&2; die "unknown option $1" ;;
            *) [[ -z "$SRC_DIR" ]] || die "only one SOURCE_DIR, got $SRC_DIR and $1"
               SRC_DIR="$1" ;;
        esac
        shift
    done
    SRC_DIR="${SRC_DIR:-$default_src}"
    [[ -f "$SRC_DIR/pyproject.toml" && -d "$SRC_DIR/appliance" ]] \
        || die "$SRC_DIR is not an Eyepiece checkout (no pyproject.toml and appliance/)"
    SRC_DIR="$(cd "$SRC_DIR" && pwd)"
}

# Installing as someone else would half-work (apt refuses, useradd refuses): say so up front.
require_root() {
    [[ "$DRY_RUN" == 1 || -n "$EYEPIECE_ROOT" || "$(id -u)" == 0 ]] \
        || die "run as root (sudo $0), or try --dry-run"
}

apt_install() {
    log "apt packages: $*"
    run apt-get update -q
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

ensure_group() {
    local group="$1"
    if getent group "$group" >/dev/null; then
        note "group $group exists"
    else
        run groupadd --system "$group"
    fi
}

# The service user: a system account with no shell and no home of its own; its groups open the
# camera (video), the GPU and the screen (render) and the GPIO lines (gpio).
ensure_user() {
    log "user $EYEPIECE_USER (groups: $*)"
    local group
    for group in "$@"; do ensure_group "$group"; done
    if getent passwd "$EYEPIECE_USER" >/dev/null; then
        note "user $EYEPIECE_USER exists"
    else
        run useradd --system --no-create-home --home-dir "$STATE_DIR" \
            --shell /usr/sbin/nologin --user-group "$EYEPIECE_USER"
    fi
    local joined
    joined="$(IFS=,; printf '%s' "$*")"
    # usermod -a adds, never removes: re-running leaves the same groups.
    run usermod -a -G "$joined" "$EYEPIECE_USER"
}

# mkdir + owner + group + mode; install -d changes nothing when they already match.
ensure_dir() {
    local path="$1" owner="$2" group="$3" mode="$4"
    run install -d -o "$owner" -g "$group" -m "$mode" "$(rooted "$path")"
}

# The folders the service uses. /etc/eyepiece is root's but readable by the service group
# (systemd's ConfigurationDirectory= keeps an existing owner); the credentials folder holds the
# broker password that eyepiece.service loads with LoadCredential= and is root's only.
make_dirs() {
    log "folders $OPT_DIR $CONF_DIR $STATE_DIR"
    ensure_dir "$OPT_DIR" root root 0755
    ensure_dir "$CONF_DIR" root "$EYEPIECE_USER" 0750
    ensure_dir "$CRED_DIR" root root 0700
    ensure_dir "$STATE_DIR" "$EYEPIECE_USER" "$EYEPIECE_USER" 0750
    # LoadCredential= refuses to start the service when the file is missing, so an empty one
    # stands in until the site writes the broker password (docs/deploy.md); never overwritten.
    if [[ -e "$(rooted "$CRED_DIR/mqtt-password")" ]]; then
        note "credential $CRED_DIR/mqtt-password exists"
    else
        run install -m 0600 /dev/null "$(rooted "$CRED_DIR/mqtt-password")"
    fi
}

# Copy SRC to DEST (a service path) with MODE, only when the content differs: a re-run leaves
# every installed file, and its timestamp, as it was.
install_file() {
    local src="$1" dest="$2" mode="$3"
    local target
    target="$(rooted "$dest")"
    [[ -f "$src" ]] || die "missing file to install: $src"
    if [[ -f "$target" ]] && cmp -s "$src" "$target"; then
        note "unchanged $dest"
        return 0
    fi
    run install -D -m "$mode" "$src" "$target"
}

# A venv that sees the distribution's packages (JetPack's TensorRT and OpenCV with GStreamer,
# Raspberry Pi OS's picamera2 and kmsdrm pygame): pip only adds what the system lacks.
make_venv() {
    log "venv $VENV_DIR (system site packages)"
    local venv
    venv="$(rooted "$VENV_DIR")"
    if [[ -x "$venv/bin/python" ]]; then
        note "venv exists"
    else
        run python3 -m venv --system-site-packages "$venv"
    fi
}

# pip install into the venv; extra arguments are requirement specifiers.
pip_install() {
    run "$(rooted "$VENV_DIR")/bin/python" -m pip install --quiet --upgrade "$@"
}

# Shipped models go beside the venv (read-only for the service under ProtectSystem=strict);
# the pip-installed package does not carry them.
install_models() {
    log "models -> $MODELS_DIR"
    [[ -d "$SRC_DIR/models" ]] || die "$SRC_DIR/models is missing: nothing to score with"
    local file rel
    while IFS= read -r -d '' file; do
        rel="${file#"$SRC_DIR/models/"}"
        install_file "$file" "$MODELS_DIR/$rel" 0644
    done < <(find "$SRC_DIR/models" -type f -print0 | sort -z)
}

# Print TOML from stdin with KEY in [SECTION] set to VALUE (a TOML literal). Fails if the key is
# not in that section, so a renamed config key cannot be skipped without notice.
toml_set() {
    local section="$1" key="$2" value="$3"
    awk -v sec="[$section]" -v key="$key" -v val="$value" '
        /^\[/ { in_sec = ($0 == sec) }
        in_sec && $0 ~ "^" key " = " { print key " = " val; done = 1; next }
        { print }
        END { if (!done) { print "toml_set: no key " key " in " sec > "/dev/stderr"; exit 3 } }'
}

# /etc/eyepiece/eyepiece.toml: the full default config with the box's paths, written only when
# there is none (a site's edits survive a re-install). Further keys: "SECTION KEY VALUE" args.
write_default_config() {
    log "config $CONF_FILE"
    local conf
    conf="$(rooted "$CONF_FILE")"
    if [[ -f "$conf" ]]; then
        note "config exists, left as it is"
        return 0
    fi
    local settings=(
        "inference models_dir \"$MODELS_DIR\""
        "inference engine_dir \"$STATE_DIR/engines\""
        "store path \"$STATE_DIR/results.sqlite\""
        "overlay dir \"$STATE_DIR/overlays\""
        "display path \"$STATE_DIR/display/latest.jpg\""
        # Where systemd puts the LoadCredential= copy of $CRED_DIR/mqtt-password.
        "mqtt password_file \"/run/credentials/eyepiece.service/mqtt-password\""
        "$@"
    )
    local appliance
    appliance="$(rooted "$VENV_DIR")/bin/appliance"
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '+ %q config --defaults > %q\n' "$appliance" "$conf.new"
        local s
        for s in "${settings[@]}"; do printf '+ toml_set %s  (%s)\n' "$s" "$conf.new"; done
        printf '+ %q config --validate %q\n' "$appliance" "$conf.new"
        printf '+ mv %q %q\n' "$conf.new" "$conf"
        return 0
    fi
    local tmp="$conf.new" s section key value
    "$appliance" config --defaults >"$tmp"
    for s in "${settings[@]}"; do
        read -r section key value <<<"$s"
        toml_set "$section" "$key" "$value" <"$tmp" >"$tmp.2" || die "config: cannot set $section.$key"
        mv "$tmp.2" "$tmp"
    done
    "$appliance" config --validate "$tmp" >/dev/null || die "generated config $tmp is invalid"
    chmod 0644 "$tmp"
    mv "$tmp" "$conf"
}

install_udev_rule() {
    log "udev rule $UDEV_RULE"
    install_file "$SRC_DIR/deploy/udev/99-eyepiece.rules" "$UDEV_RULE" 0644
    run udevadm control --reload-rules
    # Apply to the devices already present (camera, gpiochip, LEDs) without a reboot.
    run udevadm trigger --subsystem-match=video4linux --subsystem-match=gpio \
        --subsystem-match=leds --action=add
}

# Install the named units from the checkout's systemd/, reload systemd and enable them.
install_units() {
    log "systemd units: $*"
    local unit
    for unit in "$@"; do
        install_file "$SRC_DIR/systemd/$unit" "$UNIT_DIR/$unit" 0644
    done
    run systemctl daemon-reload
    # enable is idempotent; the units start at the next boot or with `systemctl start`.
    run systemctl enable "$@"
}
