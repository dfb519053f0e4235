#!/usr/bin/env bash
# Make a real Docker daemon available for stacyvm's integration tests, without
# any registry access (Debian mirrors only).
#
#   * installs Debian's docker.io + busybox-static if missing,
#   * starts dockerd in the background if `docker info` does not answer
#     (logs: $DOCKERD_LOG, default /tmp/stacyvm-dockerd.log),
#   * builds the local image stacyvm-test-busybox:latest from busybox-static,
#   * builds stacyvm-test-python:latest with debootstrap (best effort: a
#     failure there only prints a warning; set STACYVM_SKIP_PYTHON_IMAGE=1
#     to skip it entirely).
#
# Idempotent: re-running it only does what is still missing.  Must run as root.
#
# Environment knobs (all optional):
#   DOCKERD_LOG                 dockerd log file        (/tmp/stacyvm-dockerd.log)
#   DOCKERD_EXTRA_FLAGS         extra flags for dockerd (appended to every attempt)
#   DOCKER_WAIT_SECS            how long to wait for the daemon (60)
#   STACYVM_SKIP_PYTHON_IMAGE   1 = don't build stacyvm-test-python
#   STACYVM_PY_SUITE            Debian suite for the python image (bookworm)
#   STACYVM_DEBIAN_MIRROR       mirror for debootstrap (default: taken from apt sources)
set -euo pipefail

BUSYBOX_IMAGE="stacyvm-test-busybox:latest"
PYTHON_IMAGE="stacyvm-test-python:latest"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/stacyvm-dockerd.log}"
DOCKERD_PIDFILE="/var/run/docker.pid"
DOCKER_WAIT_SECS="${DOCKER_WAIT_SECS:-60}"
PY_SUITE="${STACYVM_PY_SUITE:-bookworm}"
IMAGE_PATH_ENV='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

log()  { printf '[docker-setup] %s\n' "$*" >&2; }
warn() { printf '[docker-setup] WARNING: %s\n' "$*" >&2; }
die()  { printf '[docker-setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# Serialise concurrent runs (e.g. two CI steps racing).  fd 9 is closed for
# dockerd below, so the long-lived daemon never holds this lock.
LOCK_FILE=/run/lock/stacyvm-docker-setup.lock
mkdir -p "$(dirname "$LOCK_FILE")"
exec 9>"$LOCK_FILE"
if command -v flock >/dev/null 2>&1; then
    flock -w 900 9 || die "timed out waiting for $LOCK_FILE (another docker-setup.sh running?)"
fi

# Temp dirs to remove on exit (unmounting anything debootstrap left behind).
TMP_DIRS=()
cleanup() {
    local d m
    for d in "${TMP_DIRS[@]+"${TMP_DIRS[@]}"}"; do
        [ -n "$d" ] && [ -d "$d" ] || continue
        # Unmount anything still mounted below $d, deepest first.
        awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$d" 2>/dev/null || true
    done
}
trap cleanup EXIT

# ---------------------------------------------------------------- packages --
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

APT_UPDATED=0
apt_install() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# docker.io pulls in containerd, runc, tini (docker-init) and iptables.
apt_install docker.io busybox-static iptables

command -v docker >/dev/null 2>&1 || die "no docker client on PATH after install"
DOCKERD="$(command -v dockerd || true)"
[ -n "$DOCKERD" ] || DOCKERD=/usr/sbin/dockerd
[ -x "$DOCKERD" ] || die "dockerd not found after installing docker.io"

# ------------------------------------------------------------------ daemon --
docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

# Is a dockerd we (or someone) started still alive?
dockerd_alive_pid() {
    local pid
    [ -s "$DOCKERD_PIDFILE" ] || return 1
    pid="$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa dockerd "/proc/$pid/cmdline" 2>/dev/null \
        && { echo "$pid"; return 0; }
    return 1
}

# Wait until `docker info` answers, the given pid dies, or the deadline passes.
# Returns 0 = ready, 1 = process died, 2 = timed out.
wait_for_daemon() {
    local pid="$1" deadline="$2"
    while :; do
        docker_ok && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        [ "$(date +%s)" -ge "$deadline" ] && return 2
        sleep 0.5
    done
}

fail_with_log() {
    warn "$1"
    if [ -f "$DOCKERD_LOG" ]; then
        log "last 40 lines of $DOCKERD_LOG:"
        tail -n 40 "$DOCKERD_LOG" >&2 || true
    fi
    exit 1
}

start_daemon() {
    local deadline pid rc flags
    deadline=$(( $(date +%s) + DOCKER_WAIT_SECS ))

    # A daemon is already starting (e.g. previous run, systemd): just wait.
    if pid="$(dockerd_alive_pid)"; then
        log "dockerd (pid $pid) is running but not answering yet; waiting"
        rc=0; wait_for_daemon "$pid" "$deadline" || rc=$?
        [ "$rc" -eq 0 ] && return 0
        [ "$rc" -eq 2 ] && fail_with_log "dockerd (pid $pid) did not answer within ${DOCKER_WAIT_SECS}s"
    fi

    # With systemd as init, prefer the packaged unit.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        log "starting docker via systemctl"
        if systemctl start docker >/dev/null 2>&1; then
            rc=0; wait_for_daemon "" "$deadline" || rc=$?
            [ "$rc" -eq 0 ] && return 0
        fi
        warn "systemctl start docker did not give a working daemon; starting dockerd by hand"
        systemctl stop docker docker.socket >/dev/null 2>&1 || true
    fi

    # Flag sets to try, in order.  The default (overlay2, bridge + iptables)
    # works on the reference machine (Firecracker VM, cgroup v1, ext4); the
    # others are fallbacks for more restricted sandboxes (nested containers
    # without overlayfs / netfilter).
    local -a attempts=(
        ""
        "--storage-driver=vfs"
        "--storage-driver=vfs --iptables=false --ip-masq=false --bridge=none"
    )
    for flags in "${attempts[@]}"; do
        log "starting dockerd ${flags:-(default flags)} ${DOCKERD_EXTRA_FLAGS:-}; log: $DOCKERD_LOG"
        {
            echo "=== $(date -u +%FT%TZ) docker-setup: $DOCKERD $flags ${DOCKERD_EXTRA_FLAGS:-}"
        } >>"$DOCKERD_LOG"
        # shellcheck disable=SC2086  # word splitting of flag strings is intended
        setsid nohup "$DOCKERD" --host=unix:///var/run/docker.sock $flags ${DOCKERD_EXTRA_FLAGS:-} \
            </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
        pid=$!
        rc=0; wait_for_daemon "$pid" "$deadline" || rc=$?
        case "$rc" in
            0) log "dockerd up (pid $pid)"; return 0 ;;
            1) warn "dockerd exited during startup with flags '${flags:-default}'"
               [ "$(date +%s)" -ge "$deadline" ] && break ;;
            2) kill "$pid" 2>/dev/null || true
               fail_with_log "dockerd did not answer within ${DOCKER_WAIT_SECS}s" ;;
        esac
    done
    fail_with_log "could not start dockerd with any flag set"
}

if docker_ok; then
    log "docker daemon already answering"
else
    start_daemon
fi
log "docker server $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '?'), storage driver $(docker info --format '{{.Driver}}' 2>/dev/null || echo '?')"

# ------------------------------------------------------------------ images --
image_present() { docker image inspect "$1" >/dev/null 2>&1; }

build_busybox_image() {
    local bb root a
    bb=""
    for a in /bin/busybox /usr/bin/busybox; do
        [ -x "$a" ] && { bb="$a"; break; }
    done
    [ -n "$bb" ] || die "busybox binary not found (busybox-static installed?)"
    # The image has no libc: the binary must be static.
    if ldd "$bb" >/dev/null 2>&1; then
        die "$bb is dynamically linked; install busybox-static instead of busybox"
    fi

    root="$(mktemp -d /tmp/stacyvm-busybox-rootfs.XXXXXX)"
    TMP_DIRS+=("$root")
    # mktemp makes it 0700; storage drivers that keep the image's `/` (btrfs)
    # would then let no one but root run anything in the container.
    chmod 0755 "$root"
    mkdir -p "$root"/{bin,etc,tmp,workspace,root,proc,sys,dev,usr,var/tmp}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0777 "$root/workspace"
    cp "$bb" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    for a in $("$bb" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
    done
    ln -s bin "$root/sbin"
    ln -s ../bin "$root/usr/bin"
    ln -s ../bin "$root/usr/sbin"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

    tar --numeric-owner --owner=0 --group=0 -C "$root" -c . |
        docker import \
            -c "ENV $IMAGE_PATH_ENV" \
            -c 'WORKDIR /workspace' \
            -c 'CMD ["/bin/sh"]' \
            - "$BUSYBOX_IMAGE" >/dev/null
}

if image_present "$BUSYBOX_IMAGE"; then
    log "$BUSYBOX_IMAGE already present"
else
    log "building $BUSYBOX_IMAGE"
    build_busybox_image
fi

# Smoke test: output and exit code must come through.
rc=0
out="$(docker run --rm --network none "$BUSYBOX_IMAGE" sh -c 'echo hi; exit 3')" || rc=$?
[ "$out" = "hi" ] && [ "$rc" -eq 3 ] \
    || die "smoke test failed: output '$out', exit code $rc (expected 'hi', 3)"
log "smoke test ok ($BUSYBOX_IMAGE)"

# Debian mirror for debootstrap: explicit override, else the first non-security
# Debian URI in the apt sources (both one-line and deb822 formats).
debian_mirror() {
    if [ -n "${STACYVM_DEBIAN_MIRROR:-}" ]; then echo "$STACYVM_DEBIAN_MIRROR"; return; fi
    local m
    m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v '^[[:space:]]*#' |
        grep -oE '(https?|ftp)://[^[:space:]]+' |
        grep -E '/debian/?$' | grep -v security | head -n1 || true)"
    echo "${m:-http://deb.debian.org/debian}"
}

build_python_image() {
    apt_install debootstrap || return 1
    local root mirror t0
    # Not under /tmp: that may be a nodev/noexec tmpfs on CI machines.
    root="$(mktemp -d /var/tmp/stacyvm-python-rootfs.XXXXXX)"
    TMP_DIRS+=("$root")
    chmod 0755 "$root"
    mirror="$(debian_mirror)"
    t0=$(date +%s)
    log "debootstrap $PY_SUITE from $mirror (takes ~1-2 min; log /tmp/stacyvm-debootstrap.log)"
    if ! timeout 600 debootstrap --variant=minbase --include=python3 \
            "$PY_SUITE" "$root" "$mirror" >/tmp/stacyvm-debootstrap.log 2>&1; then
        tail -n 15 /tmp/stacyvm-debootstrap.log >&2 || true
        return 1
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
           "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
    mkdir -p "$root/workspace"
    chmod 0777 "$root/workspace"
    chmod 1777 "$root/tmp"
    tar --numeric-owner -C "$root" -c . |
        docker import \
            -c "ENV $IMAGE_PATH_ENV" \
            -c 'ENV LANG=C.UTF-8' \
            -c 'WORKDIR /workspace' \
            -c 'CMD ["/bin/sh"]' \
            - "$PYTHON_IMAGE" >/dev/null || return 1
    docker run --rm --network none "$PYTHON_IMAGE" python3 -c 'print("ok")' >/dev/null || return 1
    log "built $PYTHON_IMAGE in $(( $(date +%s) - t0 ))s"
}

if [ "${STACYVM_SKIP_PYTHON_IMAGE:-0}" = 1 ]; then
    log "skipping $PYTHON_IMAGE (STACYVM_SKIP_PYTHON_IMAGE=1)"
elif image_present "$PYTHON_IMAGE"; then
    log "$PYTHON_IMAGE already present"
else
    # Runs in a subshell-free `if` so `set -e` does not abort on failure.
    if ! build_python_image; then
        warn "could not build $PYTHON_IMAGE; python-based tests will have to skip"
        docker image rm -f "$PYTHON_IMAGE" >/dev/null 2>&1 || true
    fi
fi

log "done"
