#!/bin/bash
# Set up the OpenZFS replication lab: one qemu VM (Debian 12, OpenZFS 2.3 from
# bookworm-backports) holding the same two "hosts" as the zfs-fuse lab.
#
#   setup.sh              create or repair the lab (idempotent)
#   setup.sh --check      exit 0 if the lab is up and working, 1 (saying why) if not
#   setup.sh --sync-code  only refresh the copy of src/zfsrepl that the lab users run
#
# The lab dir is $ZFSREPL_LAB_OPENZFS_DIR (default /var/tmp/zfsrepl-lab-openzfs); what
# was started is recorded in LABDIR/state, and teardown.sh undoes exactly that. Run as root.
#
#   * the image: build.sh (cached in /var/cache/zfsrepl-lab/openzfs, built when missing)
#   * the VM: qemu under TCG (this machine's KVM cannot boot a stock kernel), 2 GiB,
#     2 vCPUs, booting a copy-on-write overlay of the image (LABDIR/root.qcow2), its sshd
#     forwarded to a free port on 127.0.0.1 only
#   * one ssh connection to root@VM (ControlMaster LABDIR/run/ssh-master) that every lab
#     command and the sshfs mount share
#   * inside the VM (guest/setup.sh): pools, users with `zfs allow` rights, the network
#     namespaces zr-src/zr-dst with an sshd each, LABDIR/bin wrappers
#   * LABDIR/mnt mounted with sshfs from the VM's LABDIR/mnt, where the pools are mounted:
#     the same path on both sides, so a dataset's mountpoint is also its local path
#   * the guard route `unreachable 198.51.100.0/24` on this machine, as the fuse lab has
#   * LABDIR/lab.env, read by the Python side (tests/lab/openzfs)
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(cd "$HERE/../../.." && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

vm_ssh() {  # CMD: run the shell command CMD as root in the VM, over the master connection
    # shellcheck disable=SC2046  # ssh_opts is a list of words
    ssh -S "$CTL" -o ControlMaster=no $(ssh_opts) root@127.0.0.1 "$1"
}

sync_code() {
    [ -d "$REPO/src/zfsrepl" ] || die "no package at $REPO/src/zfsrepl"
    tar -C "$REPO/src" --exclude=__pycache__ --exclude='*.pyc' -c zfsrepl |
        vm_ssh "ZFSREPL_LAB_DIR=$LABDIR bash $LABDIR/scripts/setup.sh --sync-code"
}

# check_lab: the lab is up and answering (a run that was killed leaves its files behind
# with the VM gone); prints what is wrong
check_lab() {
    [ -e "$LABDIR/lab.env" ] || { echo "no $LABDIR/lab.env"; return 1; }
    [ -n "$(qemu_pid)" ] || { echo "the VM is not running"; return 1; }
    mountpoint -q "$LABDIR/mnt" || { echo "$LABDIR/mnt is not mounted (or its sshfs is gone)"; return 1; }
    # the guest keeps its wrappers in LABDIR/bin (lab.env is this machine's only)
    vm_ssh "test -d $LABDIR/bin" >/dev/null 2>&1 9>&- || { echo "the VM does not answer"; return 1; }
}

if [ "${1:-}" = --check ]; then
    lab_lock
    check_lab
    exit
fi

if [ "${1:-}" = --sync-code ]; then
    [ -e "$LABDIR/lab.env" ] || die "no lab at $LABDIR (run setup.sh first)"
    sync_code
    exit 0
fi
[ $# -eq 0 ] || die "usage: setup.sh [--check | --sync-code]"

lab_lock
unmount_dead_sshfs
install -d -m 0755 "$LABDIR" "$RUN" "$LABDIR/mnt" "$LABDIR/log"
install -d -m 0700 "$STATE"

# ------------------------------------------------------------------ host tools, image
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v sshfs >/dev/null || need+=(sshfs)
command -v ssh >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${need[@]}"; } >"$LABDIR/log/apt.log" 2>&1 ||
        { tail -20 "$LABDIR/log/apt.log" >&2; die "apt-get failed"; }
fi
t=$(date +%s)
IMG=$(bash "$HERE/build.sh" 9>&- | tail -n 1) || die "image build failed"
[ -f "$IMG/base.img" ] || die "the image build printed no image dir (got '$IMG')"
[ "$(($(date +%s) - t))" -gt 5 ] && log "image built in $(($(date +%s) - t))s"

# ------------------------------------------------------------------ VM
if [ -z "$(qemu_pid)" ]; then
    # a VM that is gone leaves nothing worth keeping: start from a fresh overlay
    if mounted "$LABDIR/mnt"; then umount -l "$LABDIR/mnt"; fi
    rm -f "$STATE/qemu" "$STATE/master" "$STATE/sshfs" "$LABDIR/root.qcow2" "$CTL"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "$port" > "$RUN/port"
    # shellcheck disable=SC2086  # no size: the image's
    qemu-img create -q -f qcow2 -b "$IMG/base.img" -F raw "$LABDIR/root.qcow2" $DISK_SIZE ||
        die "cannot create the VM's disk (ZFSREPL_LAB_VM_DISK='$DISK_SIZE' must be a size above the image's)"
    log "booting the VM (TCG, ${MEM_MIB} MiB, $CPUS vCPUs, ssh on 127.0.0.1:$port)"
    t=$(date +%s)
    : > "$LABDIR/log/console.log"
    rm -f "$RUN/qemu.pid"
    qemu-system-x86_64 -name zfsrepl-lab -machine q35 -accel tcg,thread=multi -cpu max \
        -smp "$CPUS" -m "$MEM_MIB" \
        -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 mitigations=off" \
        -drive "if=none,id=root,file=$LABDIR/root.qcow2,format=qcow2,discard=unmap" \
        -device virtio-blk-pci,drive=root \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
        -device virtio-rng-pci -display none -serial "file:$LABDIR/log/console.log" \
        -pidfile "$RUN/qemu.pid" -daemonize </dev/null >"$LABDIR/log/qemu.log" 2>&1 9>&- ||
        { cat "$LABDIR/log/qemu.log" >&2; die "qemu did not start"; }
    cp "$RUN/qemu.pid" "$STATE/qemu"
    up=
    for _ in $(seq 1 300); do
        # shellcheck disable=SC2046
        if ssh $(ssh_opts) root@127.0.0.1 true 2>/dev/null 9>&-; then up=1; break; fi
        [ -n "$(qemu_pid)" ] || die "qemu exited; see $LABDIR/log/console.log"
        sleep 1
    done
    [ -n "$up" ] || die "no ssh to the VM after 300 tries; see $LABDIR/log/console.log"
    log "VM up in $(($(date +%s) - t))s"
    echo "$(date -Is) boot $(($(date +%s) - t))s" >> "$LABDIR/log/timings.log"
fi

# ------------------------------------------------------------------ ssh master
if ! ssh -S "$CTL" -O check root@127.0.0.1 >/dev/null 2>&1; then
    rm -f "$CTL"
    # shellcheck disable=SC2046
    ssh -M -S "$CTL" -o ControlPersist=yes -o ServerAliveInterval=30 -f -N $(ssh_opts) \
        root@127.0.0.1 </dev/null >>"$LABDIR/log/ssh-master.log" 2>&1 9>&- ||
        die "cannot open the ssh master connection (see $LABDIR/log/ssh-master.log)"
    pid=$(ssh -S "$CTL" -O check root@127.0.0.1 2>&1 | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
    [ -n "$pid" ] || die "the ssh master does not answer"
    echo "$pid" > "$STATE/master"
fi

# ------------------------------------------------------------------ inside the VM
tar -C "$HERE/guest" -c . |
    vm_ssh "rm -rf $LABDIR/scripts && install -d $LABDIR/scripts && tar -x -C $LABDIR/scripts"
vm_ssh "ZFSREPL_LAB_DIR=$LABDIR ${POOL_SIZE:+ZFSREPL_LAB_POOL_SIZE=$POOL_SIZE} bash $LABDIR/scripts/setup.sh" \
    >"$LABDIR/log/guest-setup.log" 2>&1 ||
    { tail -20 "$LABDIR/log/guest-setup.log" >&2; die "set-up inside the VM failed"; }
sync_code

# ------------------------------------------------------------------ sshfs
if ! mountpoint -q "$LABDIR/mnt"; then
    # sshfs speaks sftp over the master connection; no caching: the VM mounts and
    # unmounts datasets below this folder at any time. It stays in the foreground (-f)
    # as our child, so that its PID is known.
    # shellcheck disable=SC2046
    setsid sshfs -f -o "ssh_command=ssh -S $CTL -o ControlMaster=no $(ssh_opts)" \
        -o dir_cache=no -o attr_timeout=0 -o entry_timeout=0 -o negative_timeout=0 \
        "root@127.0.0.1:$LABDIR/mnt" "$LABDIR/mnt" \
        </dev/null >>"$LABDIR/log/sshfs.log" 2>&1 9>&- &
    echo $! > "$STATE/sshfs"
    for _ in $(seq 1 100); do mountpoint -q "$LABDIR/mnt" && break; sleep 0.1; done
    mountpoint -q "$LABDIR/mnt" || die "sshfs did not mount $LABDIR/mnt (see $LABDIR/log/sshfs.log)"
fi

# ------------------------------------------------------------------ guard route
if [ -z "$(ip route show "$LAB_NET")" ]; then
    ip route add unreachable "$LAB_NET"
    touch "$STATE/route.guard"
fi

cat > "$LABDIR/lab.env.tmp" <<EOF
# zfsrepl lab (tests/lab/openzfs/setup.sh). KEY=VALUE lines
ZFSREPL_LAB_BACKEND=openzfs
ZFSREPL_LAB_OPENZFS_DIR=$LABDIR
LAB_BIN=$LABDIR/bin
LAB_MNT=$LABDIR/mnt
LAB_WORK=$LABDIR/work
KNOWN_HOSTS=$LABDIR/ssh/known_hosts
SSH_CONTROL=$CTL
SSH_PORT=$(vm_port)
SSH_KEY=$IMG/id_ed25519
SRC_POOL=zfsrepl_src
DST_POOL=zfsrepl_dst
SRC_NS=zr-src
DST_NS=zr-dst
SRC_IP=198.51.100.11
DST_IP=198.51.100.12
SRC_USER=src
DST_USER=dst
# a shell as root in the VM: ssh -S $CTL root@127.0.0.1; the hosts: $LABDIR/bin/on-src [--root] CMD there
EOF
mv "$LABDIR/lab.env.tmp" "$LABDIR/lab.env"
log "ready: $LABDIR (source $LABDIR/lab.env)"
