#!/bin/bash
# Undo setup.sh: stop what LABDIR/state records as started (sshfs, the ssh master, the
# VM, each by PID checked against its command line), remove the guard route if setup
# added it, and remove the lab dir. The cached image stays. Waits while a test session
# uses the lab.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=common.sh
. "$HERE/common.sh"

lab_lock
unmount_dead_sshfs
[ -d "$STATE" ] || { log "nothing to undo in $LABDIR"; rm -f "$LOCK"; exit 0; }
rc=0

if mounted "$LABDIR/mnt"; then
    fusermount3 -u "$LABDIR/mnt" 2>/dev/null || fusermount -u "$LABDIR/mnt" 2>/dev/null ||
        umount -l "$LABDIR/mnt" || rc=1
fi
if [ -s "$STATE/sshfs" ]; then
    pid=$(cat "$STATE/sshfs")
    pid_is "$pid" sshfs "$LABDIR/mnt" && stop_pid 5 "$pid"
    rm -f "$STATE/sshfs"
fi
if [ -s "$STATE/master" ]; then
    pid=$(cat "$STATE/master")
    if pid_is "$pid" ssh "$CTL"; then
        ssh -S "$CTL" -O exit root@127.0.0.1 >/dev/null 2>&1
        stop_pid 5 "$pid"
    fi
    rm -f "$STATE/master" "$CTL"
fi
if [ -s "$STATE/qemu" ]; then
    pid=$(qemu_pid)
    # the VM's disk is a throw-away overlay: no need for a clean shutdown
    [ -n "$pid" ] && stop_pid 20 "$pid"
    rm -f "$STATE/qemu"
fi
if [ -e "$STATE/route.guard" ]; then
    # the fuse lab relies on the same route while its namespaces exist
    if [ ! -e /run/netns/zr-src ]; then ip route del unreachable "$LAB_NET" 2>/dev/null; fi
    rm -f "$STATE/route.guard"
fi

if awk -v d="$LABDIR/" 'index($5, d) == 1' /proc/self/mountinfo | grep -q .; then
    log "ERROR: something is still mounted under $LABDIR; keeping it"
    rc=1
elif [ -z "$(ls -A "$STATE")" ]; then
    rm -rf "$LABDIR"
    rm -f "$LOCK"
    log "removed $LABDIR"
else
    log "kept $LABDIR; not undone: $(ls "$STATE" | tr '\n' ' ')"
    rc=1
fi
exit $rc
