#!/bin/bash
# Build (once) the OpenZFS lab's VM image: Debian 12 with OpenZFS from bookworm-backports,
# and the peer tools the benchmarks compare with (syncoid, zfs-autobackup, bzfs).
#
#   build.sh          build unless the cache holds an image of this recipe; print its dir
#   build.sh --path   only print the dir the image of this recipe has (or would have)
#
# The image is cached in $ZFSREPL_LAB_CACHE (default /var/cache/zfsrepl-lab/openzfs) under
# the SHA-256 of this file: editing the recipe (this file) builds a new image, and a
# finished build removes the images of older recipes. Only the Debian archive that this
# machine's apt uses and the package index its pip uses are contacted. Run as root. The result, in CACHE/<hash>/:
#   base.img        raw ext4 root filesystem (the VM boots copy-on-write overlays of it)
#   vmlinuz, initrd.img
#   id_ed25519      key that root@VM accepts (the lab's ssh master uses it)
#   timings.log     how long each phase took
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
CACHE=${ZFSREPL_LAB_CACHE:-/var/cache/zfsrepl-lab/openzfs}
HASH=$(sha256sum "$HERE/build.sh" | cut -c1-16)
OUT=$CACHE/$HASH

if [ "${1:-}" = --path ]; then echo "$OUT"; exit 0; fi
[ $# -eq 0 ] || { echo "usage: build.sh [--path]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root" >&2; exit 1; }

log() { echo "zfsrepl-lab(openzfs): $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ -f "$OUT/base.img" ]; then echo "$OUT"; exit 0; fi

# ZFS 2.3 and the 6.12 kernel it is built for come from bookworm-backports
SUITE_OPTS=(-t bookworm-backports)
host_uri() { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -E "$1" | head -n1; }
MIRROR=${ZFSREPL_LAB_MIRROR:-$(host_uri '/debian/?$')}
SECURITY_MIRROR=${ZFSREPL_LAB_SECURITY_MIRROR:-$(host_uri '/debian-security/?$')}
[ -n "$MIRROR" ] && [ -n "$SECURITY_MIRROR" ] ||
    die "no Debian archive in /etc/apt/sources.list.d/*.sources: set ZFSREPL_LAB_MIRROR and ZFSREPL_LAB_SECURITY_MIRROR"

# host tools, from the Debian archive, only those missing
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v sshfs >/dev/null || need+=(sshfs)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; } \
        >/tmp/zfsrepl-lab-apt.$$ 2>&1 || { tail -20 /tmp/zfsrepl-lab-apt.$$ >&2; die "apt-get failed"; }
    rm -f /tmp/zfsrepl-lab-apt.$$
fi

install -d -m 0755 "$CACHE"
exec 8>"$CACHE/.build.lock"
flock -w 3600 8 || die "another build holds $CACHE/.build.lock"
if [ -f "$OUT/base.img" ]; then echo "$OUT"; exit 0; fi   # built while we waited

B=$CACHE/build-$HASH   # work dir; every phase leaves a stamp, so an interrupted build resumes
R=$B/rootfs
install -d -m 0700 "$B"
phase() {  # phase NAME START: record how long it took
    local d=$(( $(date +%s) - $2 ))
    log "$1 took ${d}s"
    echo "$1 ${d}s" >> "$B/timings.log"
}
mount_chroot() {
    mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
    mountpoint -q "$R/sys" || mount -t sysfs sys "$R/sys"
    mountpoint -q "$R/dev" || mount --bind /dev "$R/dev"
    mountpoint -q "$R/dev/pts" || mount --bind /dev/pts "$R/dev/pts"
}
umount_chroot() {
    local m
    for m in dev/pts dev sys proc; do
        if mountpoint -q "$R/$m" 2>/dev/null; then umount -l "$R/$m"; fi
    done
}
in_chroot() {
    chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}
trap umount_chroot EXIT

if [ ! -f "$B/.done-debootstrap" ]; then
    t=$(date +%s)
    umount_chroot
    rm -rf "$R"
    log "debootstrap (log: $B/debootstrap.log)"
    debootstrap --variant=minbase --components=main,contrib \
        --include=systemd-sysv,udev,kmod,dbus,openssh-server,openssh-sftp-server,python3,iproute2,procps,zstd,lz4,mbuffer,pv,ca-certificates \
        bookworm "$R" "$MIRROR" >"$B/debootstrap.log" 2>&1 || die "debootstrap failed, see $B/debootstrap.log"
    touch "$B/.done-debootstrap"
    phase debootstrap "$t"
fi

mount_chroot
if [ ! -f "$B/.done-packages" ]; then
    t=$(date +%s)
    cat > "$R/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates bookworm-backports
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$R/etc/apt/sources.list"
    printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"
    chmod +x "$R/usr/sbin/policy-rc.d"
    # an initrd with just what mounts / from virtio: small, and fast to boot under TCG
    mkdir -p "$R/etc/initramfs-tools/conf.d"
    echo 'MODULES=list' > "$R/etc/initramfs-tools/conf.d/zfsrepl-lab.conf"
    printf '%s\n' virtio_pci virtio_blk virtio_net ext4 > "$R/etc/initramfs-tools/modules"
    log "kernel, headers, dkms, zfsutils (log: $B/apt.log)"
    in_chroot apt-get update -q >"$B/apt.log" 2>&1
    in_chroot apt-get install -y -q --no-install-recommends "${SUITE_OPTS[@]}" \
        linux-image-amd64 linux-headers-amd64 dkms zfsutils-linux sanoid >>"$B/apt.log" 2>&1 ||
        die "apt-get install failed, see $B/apt.log"
    touch "$B/.done-packages"
    phase packages "$t"
fi

kv=$(ls "$R/lib/modules" | sort -V | tail -1)
if [ ! -f "$B/.done-dkms" ]; then
    t=$(date +%s)
    log "zfs-dkms: building zfs.ko for $kv (log: $B/dkms.log)"
    in_chroot apt-get install -y -q --no-install-recommends "${SUITE_OPTS[@]}" zfs-dkms \
        >"$B/dkms.log" 2>&1 || die "zfs-dkms install failed, see $B/dkms.log"
    zv=$(in_chroot dpkg-query -W -f '${Version}' zfs-dkms | sed 's/-[^-]*$//')
    # a no-op when the postinst built it already
    in_chroot dkms install "zfs/$zv" -k "$kv" >>"$B/dkms.log" 2>&1 || true
    [ -n "$(find "$R/lib/modules/$kv" -name 'zfs.ko*' | head -1)" ] ||
        die "no zfs.ko for $kv, see $B/dkms.log"
    touch "$B/.done-dkms"
    phase dkms "$t"
fi

# zfs-autobackup and bzfs, the other peers the benchmarks compare with (syncoid comes with
# the sanoid package above): pure Python from PyPI, installed with this machine's pip into
# its own folder, so the guest needs no pip
if [ ! -f "$B/.done-peers" ]; then
    t=$(date +%s)
    rm -rf "$R/opt/zfs-autobackup"
    python3 -m pip install -q --no-deps --target "$R/opt/zfs-autobackup" zfs-autobackup colorama \
        >"$B/pip.log" 2>&1 || die "pip install zfs-autobackup failed, see $B/pip.log"
    cat > "$R/usr/local/bin/zfs-autobackup" <<'EOF'
#!/usr/bin/python3
import sys
sys.path.insert(0, "/opt/zfs-autobackup")
from zfs_autobackup.ZfsAutobackup import cli
cli()
EOF
    chmod 0755 "$R/usr/local/bin/zfs-autobackup"
    rm -rf "$R/opt/zfs-autobackup/bin"  # pip's launchers, for this machine's Python
    # (its --version exits 255)
    in_chroot python3 -c 'import sys; sys.path.insert(0, "/opt/zfs-autobackup")
import zfs_autobackup.ZfsAutobackup' >>"$B/pip.log" 2>&1 || die "zfs-autobackup does not import, see $B/pip.log"
    # bzfs, pinned so that figures of different runs compare: pure Python (>= 3.9), no
    # dependencies at run time, installed the same way
    rm -rf "$R/opt/bzfs"
    python3 -m pip install -q --no-deps --target "$R/opt/bzfs" bzfs==1.25.0 \
        >>"$B/pip.log" 2>&1 || die "pip install bzfs failed, see $B/pip.log"
    cat > "$R/usr/local/bin/bzfs" <<'EOF'
#!/usr/bin/python3
import sys
sys.path.insert(0, "/opt/bzfs")
from bzfs_main.bzfs import main
main()
EOF
    chmod 0755 "$R/usr/local/bin/bzfs"
    rm -rf "$R/opt/bzfs/bin"
    in_chroot /usr/local/bin/bzfs --version >>"$B/pip.log" 2>&1 || die "bzfs does not run, see $B/pip.log"
    touch "$B/.done-peers"
    phase peers "$t"
fi

if [ ! -f "$B/.done-config" ]; then
    t=$(date +%s)
    echo zfsrepl-lab > "$R/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 zfsrepl-lab\n' > "$R/etc/hosts"
    echo '/dev/vda / ext4 defaults,noatime,errors=remount-ro 0 1' > "$R/etc/fstab"
    echo 'nameserver 10.0.2.3' > "$R/etc/resolv.conf"
    mkdir -p "$R/etc/systemd/network"
    printf '[Match]\nName=eth* en*\n[Network]\nDHCP=ipv4\n' > "$R/etc/systemd/network/10-dhcp.network"
    in_chroot systemctl enable systemd-networkd ssh >/dev/null 2>&1
    # nothing that competes for the emulated CPUs, and no pool import at boot: the lab
    # creates its pools itself after each boot
    in_chroot systemctl mask systemd-networkd-wait-online.service apt-daily.timer \
        apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
        man-db.timer dpkg-db-backup.timer zfs-zed.service zfs-import-cache.service \
        zfs-import-scan.service zfs-scrub-monthly@.timer zfs-trim-monthly@.timer \
        sanoid.timer sanoid-prune.service \
        >/dev/null 2>&1 || true
    mkdir -p "$R/etc/systemd/system/serial-getty@ttyS0.service.d"
    printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200 %%I $TERM\n' \
        > "$R/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
    echo 'options zfs zfs_arc_max=268435456' > "$R/etc/modprobe.d/zfs.conf"
    echo zfs > "$R/etc/modules-load.d/zfs.conf"
    # root's sshd (the lab's one connection from the machine): key only, no PAM round
    # trips, many sessions over the one connection
    cat > "$R/etc/ssh/sshd_config.d/00-zfsrepl-lab.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
MaxSessions 500
MaxStartups 200:30:400
EOF
    ssh-keygen -q -t ed25519 -N '' -C zfsrepl-lab-root -f "$B/id_ed25519"
    install -d -m 0700 "$R/root/.ssh"
    install -m 0600 "$B/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
    rm -f "$R/usr/sbin/policy-rc.d"
    in_chroot apt-get clean
    rm -rf "$R/var/lib/apt/lists/"* "$R/usr/src/"*/  # headers and sources: only needed to build
    touch "$B/.done-config"
    phase configure "$t"
fi

t=$(date +%s)
umount_chroot
trap - EXIT
cp -L "$R/vmlinuz" "$B/vmlinuz"
cp -L "$R/initrd.img" "$B/initrd.img"
mb=$(du -sm "$R" | cut -f1)
rm -f "$B/base.img.tmp"
# (it reports "Creating regular file" on stdout, which is for the image path only)
mkfs.ext4 -q -F -L zfsrepl-lab -d "$R" "$B/base.img.tmp" "$((mb + 1024))M" >&2
mv "$B/base.img.tmp" "$B/base.img"
phase image "$t"
# publish: the finished files move to CACHE/<hash> in one rename; older recipes go
rm -rf "$R" "$B"/.done-*
mv -T "$B" "$OUT"
for d in "$CACHE"/*/; do
    d=${d%/}
    [ "$d" = "$OUT" ] && continue
    case "$(basename "$d")" in build-*) [ -f "$d/.done-debootstrap" ] && continue ;; esac
    log "removing the image of an older recipe: $d"
    rm -rf "$d"
done
log "image ready: $OUT ($(du -sh "$OUT/base.img" | cut -f1) on disk), kernel $kv"
echo "$OUT"
