#!/bin/bash
# Undo setup.sh: remove only what LABDIR/state records as created by it.
#
#   teardown.sh        (lab dir: $ZFSREPL_LAB_DIR, default /var/tmp/zfsrepl-lab)
#
# Order: sshds (by PID file, checked against the command line) and their sessions; any
# process left inside the lab's own network namespaces (ssh masters, daemons a test
# forgot; nothing outside those namespaces is touched); the namespaces and the guard
# route; the pools (only if backed by LABDIR/img); the shared bind mount; zfs-fuse if
# setup started it and no pool is left; known_hosts entries, sudoers, users, group; the
# lab dir. Packages stay installed. Waits while a test session uses the lab.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=common.sh
. "$HERE/common.sh"

lab_lock
[ -d "$STATE" ] || { log "nothing to undo in $LABDIR"; rm -f "$LOCK"; exit 0; }
rc=0

# ------------------------------------------------------------------ processes, network
for side in src dst; do
    [ -f "$LABDIR/ssh/$(side_ns $side)/sshd_config" ] && "$HERE/sshd.sh" stop $side
done
for f in "$STATE"/netns.*; do
    [ -e "$f" ] || continue
    ns=${f##*/netns.}
    if [ -e "/run/netns/$ns" ]; then
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        if [ -n "$pids" ]; then
            for p in $pids; do log "stopping leftover $p in $ns: $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)"; done
            # shellcheck disable=SC2086  # one PID per word
            stop_pids 5 $pids
        fi
        ip netns del "$ns" || rc=1
    fi
    rm -f "$f"
done
if [ -e "$STATE/route.guard" ]; then
    ip route del unreachable "$LAB_NET" 2>/dev/null
    rm -f "$STATE/route.guard"
fi

# ------------------------------------------------------------------ pools, mounts
for f in "$STATE"/pool.*; do
    [ -e "$f" ] || continue
    p=${f##*/pool.}
    img=$(cat "$f")
    if zpool list -H -o name "$p" >/dev/null 2>&1; then
        if ! zpool status "$p" | grep -qF "$img"; then
            log "pool $p is not backed by $img; leaving it alone"
            rm -f "$f"
            continue
        fi
        # FUSE unmounts lag behind: "pool is busy" for a moment is normal
        for _ in $(seq 1 20); do
            zpool destroy "$p" 2>/dev/null && break
            sleep 0.25
        done
        if zpool list -H -o name "$p" >/dev/null 2>&1; then
            zpool destroy -f "$p" || { log "ERROR: cannot destroy pool $p"; rc=1; continue; }
        fi
    fi
    rm -f "$img" "$f"
done
rmdir "$LABDIR"/mnt/* 2>/dev/null
if [ -e "$STATE/mnt.bind" ] && [ -z "$(ls "$STATE"/pool.* 2>/dev/null)" ]; then
    umount "$LABDIR/mnt" 2>/dev/null || umount -l "$LABDIR/mnt"
    rm -f "$STATE/mnt.bind"
fi
if [ -s "$STATE/zfs-fuse.started" ]; then
    pid=$(cat "$STATE/zfs-fuse.started")
    others=$(zpool list -H -o name 2>/dev/null | tr '\n' ' ')
    if [ -n "$others" ]; then
        log "zfs-fuse (pid $pid) still has pools ($others); leaving it running"
    else
        # it syncs and closes the pool files on SIGTERM: give it time
        pid_is "$pid" zfs-fuse && stop_pids 60 "$pid"
        if [ -f "$STATE/zfs-fuse.dirs" ]; then
            xargs -r rm -rf < "$STATE/zfs-fuse.dirs"
            rm -f "$STATE/zfs-fuse.dirs"
        fi
        rm -f "$STATE/zfs-fuse.started"
    fi
fi

# ------------------------------------------------------------------ users, sudo, ssh
# another sshd (the machine's, another lab's) may still need it
if [ -e "$STATE/run-sshd" ]; then
    pgrep -x sshd >/dev/null || rmdir /run/sshd 2>/dev/null
    rm -f "$STATE/run-sshd"
fi
if [ -e "$STATE/sudoers" ]; then
    rm -f "$SUDOERS" "$STATE/sudoers"
fi
for u in $USERS; do
    if [ -e "$STATE/user.$u" ]; then
        # zombies do not count: pid 1 reaps them in its own time
        procs=$(ps -u "$u" -o pid=,stat= 2>/dev/null | awk '$2 !~ /^Z/ { printf "%s ", $1 }')
        if [ -n "$procs" ]; then
            log "ERROR: user $u still runs processes not started by the lab ($procs); keeping $u"
            rc=1
            continue
        fi
        # the ssh control folders of a zfsrepl that a test killed (kill -9 cannot clean up)
        find /tmp -maxdepth 1 -type d -name 'zfsrepl-ssh-*' -user "$u" -exec rm -rf -- {} +
        userdel -f -r "$u" 2>/dev/null
        id "$u" >/dev/null 2>&1 || rm -f "$STATE/user.$u"
    elif home=$(getent passwd "$u" | cut -d: -f6) && [ -f "$home/.ssh/known_hosts" ]; then
        # someone else's user: take back only our host entries
        for ip in "$SRC_IP" "$DST_IP"; do ssh-keygen -q -R "$ip" -f "$home/.ssh/known_hosts" >/dev/null 2>&1; done
        rm -f "$home/.ssh/known_hosts.old"
    fi
done
if [ -e "$STATE/group" ]; then
    gid=$(getent group "$GROUP" | cut -d: -f3)
    if [ -n "$gid" ] && getent passwd | awk -F: -v g="$gid" '$4 == g' | grep -q .; then
        log "group $GROUP is still a primary group; keeping it"
    else
        groupdel "$GROUP" 2>/dev/null
        rm -f "$STATE/group"
    fi
fi

# ------------------------------------------------------------------ lab dir
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
