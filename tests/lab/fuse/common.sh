# shellcheck shell=bash disable=SC2034  # the names are used by the scripts that source this
# Shared names and helpers for the zfs-fuse lab scripts (sourced, not run).
#
# Everything the lab creates on the machine is named here, so that setup.sh,
# teardown.sh and sshd.sh agree and the lab can sit beside other users of the
# shared zfs-fuse daemon without touching their pools, namespaces or users.

LABDIR=${ZFSREPL_LAB_DIR:-/var/tmp/zfsrepl-lab}
LOCK="$LABDIR.lock"       # outside LABDIR: teardown removes LABDIR while holding it
STATE="$LABDIR/state"     # one file per thing setup created; teardown undoes only those
BIN="$LABDIR/bin"

SRC_POOL=zfsrepl_src
DST_POOL=zfsrepl_dst
POOL_SIZE=${ZFSREPL_LAB_POOL_SIZE:-2G}
NS_SRC=zr-src
NS_DST=zr-dst
VETH_SRC=zr-veth-s
VETH_DST=zr-veth-d
# The machine's own networks are 192.0.2.0/24 and 203.0.113.0/24: never route those.
LAB_NET=198.51.100.0/24
SRC_IP=198.51.100.11
DST_IP=198.51.100.12
USERS="src dst"
GROUP=zfsrepl-lab         # Debian already has a system group "src"
SUDOERS=/etc/sudoers.d/zfsrepl-lab
USER_PATH="$BIN:/usr/local/bin:/usr/bin:/bin"
ROOT_PATH="$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# /usr/bin/python3 is the users' runtime for zfsrepl (Debian's 3.11, standard library only);
# zstd, lz4 and mbuffer are what wire compression and buffering use where present;
# nftables drops packets in a namespace for the stalled-transfer tests; Pacemaker,
# Corosync and the resource agents run the cluster tests (ocf-tester, a one-node cluster);
# faketime steps the clock of zfsrepl alone in the fault campaign (tests/faults)
PACKAGES="zfs-fuse openssh-server openssh-client sudo libxml2-utils iproute2 procps util-linux python3 systemd zstd lz4 mbuffer nftables resource-agents pacemaker corosync pacemaker-cli-utils faketime"

log() { echo "zfsrepl-lab: $*"; }
die() { echo "zfsrepl-lab: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
case "$LABDIR" in
    /*[[:space:]]* | *[[:space:]]*) die "lab dir must not contain whitespace: '$LABDIR'" ;;
    /?*) ;;
    *) die "lab dir must be an absolute path: '$LABDIR'" ;;
esac
[ -d "$(dirname "$LABDIR")" ] || die "the lab dir's parent does not exist: $(dirname "$LABDIR")"

# side_ns src|dst, side_ip src|dst: the namespace and address of a "host"
side_ns() { if [ "$1" = src ]; then echo "$NS_SRC"; else echo "$NS_DST"; fi; }
side_ip() { if [ "$1" = src ]; then echo "$SRC_IP"; else echo "$DST_IP"; fi; }

# lab_lock: hold an exclusive lock on $LOCK (fd 9) for the rest of the script, so that
# set-up and teardown never overlap each other or a test session (which holds it for
# its whole length). A caller that already holds it exports ZFSREPL_LAB_LOCKED=1.
# Daemons started while holding it must get `9>&-`, or they would keep it forever.
lab_lock() {
    [ -n "${ZFSREPL_LAB_LOCKED:-}" ] && return 0
    while :; do
        exec 9>>"$LOCK"
        flock -w 3600 9 || die "timed out waiting for $LOCK (a test session is using the lab)"
        # teardown deletes the file while holding it: make sure we hold the current one
        [ "$(stat -c %i "$LOCK" 2>/dev/null)" = "$(stat -L -c %i /proc/self/fd/9)" ] && return 0
        exec 9>&-
    done
}

# pid_is PID TEXT: PID is alive and its command line contains TEXT (guards against reuse)
pid_is() {
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -qF -- "$2"
}

# zfs_fuse_alive: a zfs-fuse daemon runs (one just killed may linger as a zombie)
zfs_fuse_alive() {
    ps -C zfs-fuse -o stat= 2>/dev/null | grep -qv '^Z'
}

# descendants PID: every process below PID (an sshd's sessions and their commands)
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}

# stop_pids SECONDS PID...: SIGTERM, wait up to SECONDS, then SIGKILL what is left
stop_pids() {
    local wait=$1 p left
    shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null
    for _ in $(seq 1 $((wait * 10))); do
        left=
        for p in "$@"; do [ -d "/proc/$p" ] && left=1; done
        [ -z "$left" ] && return 0
        sleep 0.1
    done
    log "still alive after SIGTERM, sending SIGKILL: $*"
    kill -KILL "$@" 2>/dev/null
    return 0
}
