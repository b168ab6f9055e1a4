# shellcheck shell=bash disable=SC2034  # the names are used by the scripts that source this
# Names and helpers of the OpenZFS lab's machine-side scripts (sourced, not run).

LABDIR=${ZFSREPL_LAB_OPENZFS_DIR:-/var/tmp/zfsrepl-lab-openzfs}
LOCK="$LABDIR.lock"
STATE="$LABDIR/state"   # one file per thing setup.sh started or created; teardown undoes those
RUN="$LABDIR/run"
CTL="$RUN/ssh-master"   # ControlPath of the one ssh connection to the VM
LAB_NET=198.51.100.0/24
MEM_MIB=${ZFSREPL_LAB_VM_MEM:-2048}
CPUS=${ZFSREPL_LAB_VM_CPUS:-2}
# The VM's disk (both pools' image files live on it): the image's own size unless
# given (qemu-img sizes, e.g. 6G); the guest grows its root filesystem to fit.
DISK_SIZE=${ZFSREPL_LAB_VM_DISK:-}
# Each pool's image file in a new VM (guest/common.sh's default unless given)
POOL_SIZE=${ZFSREPL_LAB_POOL_SIZE:-}

log() { echo "zfsrepl-lab(openzfs): $*"; }
die() { echo "zfsrepl-lab(openzfs): ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
for size in "$DISK_SIZE" "$POOL_SIZE"; do
    [[ -z $size || $size =~ ^[1-9][0-9]*[KMGT]$ ]] ||
        die "'$size' is not a size such as 6G (ZFSREPL_LAB_VM_DISK, ZFSREPL_LAB_POOL_SIZE)"
done
case "$LABDIR" in
    /*[[:space:]]* | *[[:space:]]*) die "lab dir must not contain whitespace: '$LABDIR'" ;;
    /?*) ;;
    *) die "lab dir must be an absolute path: '$LABDIR'" ;;
esac

# lab_lock: as in tests/lab/fuse/common.sh (fd 9 held for the rest of the script)
lab_lock() {
    [ -n "${ZFSREPL_LAB_LOCKED:-}" ] && return 0
    while :; do
        exec 9>>"$LOCK"
        flock -w 3600 9 || die "timed out waiting for $LOCK (a test session is using the lab)"
        [ "$(stat -c %i "$LOCK" 2>/dev/null)" = "$(stat -L -c %i /proc/self/fd/9)" ] && return 0
        exec 9>&-
    done
}

pid_is() {  # PID TEXT...: PID is alive and its command line contains every TEXT
    local pid=$1 cmd
    shift
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline")
    for t in "$@"; do case "$cmd" in *"$t"*) ;; *) return 1 ;; esac; done
}

stop_pid() {  # SECONDS PID: SIGTERM, wait, then SIGKILL
    kill -TERM "$2" 2>/dev/null || return 0
    for _ in $(seq 1 $(($1 * 10))); do [ -d "/proc/$2" ] || return 0; sleep 0.1; done
    log "pid $2 still alive after SIGTERM, sending SIGKILL"
    kill -KILL "$2" 2>/dev/null
    return 0
}

# the cached image's dir (build.sh --path) and the ssh options that reach root in the VM
image_dir() { bash "$HERE/build.sh" --path; }
vm_port() { cat "$RUN/port" 2>/dev/null; }
ssh_opts() {
    echo "-i $(image_dir)/id_ed25519 -p $(vm_port) -o StrictHostKeyChecking=no" \
        "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=10"
}
mounted() {  # PATH: something is mounted at PATH (also a dead FUSE mount, which mountpoint(1) misses)
    awk -v p="$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# unmount_dead_sshfs: an sshfs that was killed (or a machine image saved while the lab was
# up) leaves LABDIR/mnt mounted but dead ("transport endpoint is not connected"), which
# breaks every later use of the path, even `install -d`
unmount_dead_sshfs() {
    mounted "$LABDIR/mnt" || return 0
    [ -s "$STATE/sshfs" ] && pid_is "$(cat "$STATE/sshfs")" sshfs "$LABDIR/mnt" && return 0
    log "unmounting $LABDIR/mnt, left by an sshfs that is gone"
    umount -l "$LABDIR/mnt" || die "cannot unmount $LABDIR/mnt"
}

qemu_pid() {  # the lab's qemu, if it runs
    local p
    p=$(cat "$STATE/qemu" 2>/dev/null) && pid_is "$p" qemu-system-x86_64 "$LABDIR/" && echo "$p"
}
