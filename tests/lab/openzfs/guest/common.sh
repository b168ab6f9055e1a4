# shellcheck shell=bash disable=SC2034  # the names are used by the scripts that source this
# Names shared by the guest-side scripts of the OpenZFS lab (run as root inside the VM).
# Hosts, users, pools and addresses are those of the zfs-fuse lab (tests/lab/fuse/common.sh).

LABDIR=${ZFSREPL_LAB_DIR:?}
BIN="$LABDIR/bin"
SRC_POOL=zfsrepl_src
DST_POOL=zfsrepl_dst
POOL_SIZE=${ZFSREPL_LAB_POOL_SIZE:-1G}
NS_SRC=zr-src
NS_DST=zr-dst
VETH_SRC=zr-veth-s
VETH_DST=zr-veth-d
LAB_NET=198.51.100.0/24
SRC_IP=198.51.100.11
DST_IP=198.51.100.12
USERS="src dst"
GROUP=zfsrepl-lab
# users run /usr/sbin/zfs themselves, with the rights `zfs allow` gave them
USER_PATH="$BIN:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
ROOT_PATH="$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { echo "zfsrepl-lab(vm): $*"; }
die() { echo "zfsrepl-lab(vm): ERROR: $*" >&2; exit 1; }

side_ns() { if [ "$1" = src ]; then echo "$NS_SRC"; else echo "$NS_DST"; fi; }
side_ip() { if [ "$1" = src ]; then echo "$SRC_IP"; else echo "$DST_IP"; fi; }

pid_is() {  # PID TEXT: PID is alive and its command line contains TEXT
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -qF -- "$2"
}

descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}

stop_pids() {  # SECONDS PID...: SIGTERM, wait, SIGKILL what is left
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
    kill -KILL "$@" 2>/dev/null
    return 0
}
