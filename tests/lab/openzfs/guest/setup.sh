#!/bin/bash
# Inside the VM, as root: the lab's hosts, users and pools (idempotent).
#
#   setup.sh               create or repair the lab
#   setup.sh --sync-code   replace the users' copy of zfsrepl by the tar archive on stdin
#
# ZFSREPL_LAB_DIR names the lab dir (the same path as on the machine; mounts of the pools
# are under LABDIR/mnt, which the machine mounts with sshfs at the same path). Sets up:
#   * pools zfsrepl_src / zfsrepl_dst on sparse files in LABDIR/img, mounted under LABDIR/mnt
#   * users src and dst (group zfsrepl-lab), ed25519 keys authorized for both users, and
#     the rights in ./permissions (both roles) delegated to both on both pools with
#     `zfs allow` (no sudo: they run /usr/sbin/zfs themselves)
#   * namespaces zr-src (198.51.100.11) and zr-dst (198.51.100.12) joined by a veth pair,
#     an sshd in each, known_hosts for both users, a guard route in the VM's own namespace
#   * LABDIR/bin: zfsrepl (runs LABDIR/py with /usr/bin/python3), on-src/on-dst
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=common.sh
. "$HERE/common.sh"

sync_code() {  # tar of the zfsrepl package on stdin
    local new old
    new=$(mktemp -d "$LABDIR/py-XXXXXX")
    tar -x -C "$new" -f -
    [ -f "$new/zfsrepl/__init__.py" ] || die "no zfsrepl package in the archive"
    if [ -d "$LABDIR/py/zfsrepl" ] && diff -r -q -x __pycache__ "$LABDIR/py/zfsrepl" "$new/zfsrepl" >/dev/null; then
        rm -rf "$new"
        return 0
    fi
    /usr/bin/python3 -m compileall -q "$new" >/dev/null || true
    chmod -R a+rX "$new"
    chmod 0755 "$new"
    old=$(readlink "$LABDIR/py" 2>/dev/null || true)
    ln -sfn "$(basename "$new")" "$LABDIR/py.tmp"
    mv -T "$LABDIR/py.tmp" "$LABDIR/py"
    for d in "$LABDIR"/py-*; do
        case "$(basename "$d")" in "$(basename "$new")" | "$old") ;; *) rm -rf "$d" ;; esac
    done
}

if [ "${1:-}" = --sync-code ]; then
    sync_code
    exit 0
fi
[ $# -eq 0 ] || die "usage: setup.sh [--sync-code]"
PERMISSIONS=$(sed -n 's/^[a-z]*: *//p' "$HERE/permissions" | tr ',' '\n' | sort -u | paste -sd,)
[ -n "$PERMISSIONS" ] || die "no permissions in $HERE/permissions"

install -d -m 0755 "$LABDIR" "$LABDIR"/{img,mnt,run,ssh,log,bin,work}
install -d -m 0700 "$LABDIR/run/pids"
find "$LABDIR/run/pids" -type f -delete   # PID files of commands (run.py) of earlier sessions
modprobe zfs
# a VM disk made larger than the image (ZFSREPL_LAB_VM_DISK): the root filesystem
# grows to fill it, online (resize2fs does nothing where it fills it already)
resize2fs "$(findmnt -n -o SOURCE /)" >/dev/null 2>&1 || die "cannot grow the root filesystem"

# ------------------------------------------------------------------ pools
for p in "$SRC_POOL" "$DST_POOL"; do
    img="$LABDIR/img/$p.img"
    if zpool list -H -o name "$p" >/dev/null 2>&1; then
        continue
    elif [ -f "$img" ]; then
        zpool import -d "$LABDIR/img" "$p"
    else
        truncate -s "$POOL_SIZE" "$img"
        zpool create -m "$LABDIR/mnt/$p" "$p" "$img"
    fi
    # freed blocks go back to the VM's small disk (the image files are sparse): without
    # it, a benchmark's destroyed data stays allocated and fills the disk
    zpool set autotrim=on "$p"
done

# ------------------------------------------------------------------ users, keys, rights
getent group "$GROUP" >/dev/null || groupadd "$GROUP"
for u in $USERS; do
    id "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash -g "$GROUP" "$u"
    # '*': no password, but not locked ('!'), which sshd without PAM refuses even for keys
    [ "$(getent shadow "$u" | cut -d: -f2)" != "!" ] || usermod -p '*' "$u"
    home=$(getent passwd "$u" | cut -d: -f6)
    install -d -m 0700 -o "$u" -g "$GROUP" "$home/.ssh"
    [ -f "$home/.ssh/id_ed25519" ] ||
        runuser -u "$u" -- ssh-keygen -q -t ed25519 -N '' -C "$u@zfsrepl-lab" -f "$home/.ssh/id_ed25519"
done
for u in $USERS; do
    ak="$(getent passwd "$u" | cut -d: -f6)/.ssh/authorized_keys"
    touch "$ak"
    for k in $USERS; do
        pub=$(cat "$(getent passwd "$k" | cut -d: -f6)/.ssh/id_ed25519.pub")
        grep -qxF "$pub" "$ak" || echo "$pub" >> "$ak"
    done
    chown "$u:$GROUP" "$ak"
    chmod 0600 "$ak"
done
for p in "$SRC_POOL" "$DST_POOL"; do
    # exactly PERMISSIONS: drop any other right a former run granted
    zfs unallow -u src,dst "$p" 2>/dev/null || true
    zfs allow -u src,dst "$PERMISSIONS" "$p"
done

# ------------------------------------------------------------------ wrappers
write_exe() {  # path; content on stdin
    cat > "$1.tmp"
    chmod 0755 "$1.tmp"
    mv "$1.tmp" "$1"
}
write_exe "$BIN/zfsrepl" <<EOF
#!/bin/sh
# the lab's copy of the package under test (setup.sh --sync-code), on the users' runtime
PYTHONPATH=$LABDIR/py PYTHONSAFEPATH=1 exec /usr/bin/python3 -m zfsrepl "\$@"
EOF
# on-src / on-dst [--root] CMD...: run CMD on that "host" (its network namespace) as
# its user, or root, with a clean environment. Every step execs, so CMD keeps the PID
# of whoever runs (or sources) this: run.py sources it from the ssh session's shell
# after writing that shell's PID to a file, so that it can signal CMD.
for side in src dst; do
    ns=$(side_ns $side)
    home=$(getent passwd $side | cut -d: -f6)
    write_exe "$BIN/on-$side" <<EOF
#!/bin/sh
if [ "\${1:-}" = --root ]; then
    shift
    cd /root || exit 1
    exec nsenter --net=/run/netns/$ns env -i HOME=/root LANG=C.UTF-8 PATH=$ROOT_PATH "\$@"
fi
cd $home || exit 1
exec nsenter --net=/run/netns/$ns setpriv --reuid=$side --regid=$GROUP --init-groups \\
    --reset-env env LANG=C.UTF-8 PATH=$USER_PATH "\$@"
EOF
done

# ------------------------------------------------------------------ network
for ns in "$NS_SRC" "$NS_DST"; do
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    ip -n "$ns" link set lo up
done
if ! ip -n "$NS_SRC" link show "$VETH_SRC" >/dev/null 2>&1 ||
    ! ip -n "$NS_DST" link show "$VETH_DST" >/dev/null 2>&1; then
    ip -n "$NS_SRC" link del "$VETH_SRC" 2>/dev/null || true
    ip -n "$NS_DST" link del "$VETH_DST" 2>/dev/null || true
    ip -n "$NS_SRC" link add "$VETH_SRC" type veth peer name "$VETH_DST"
    ip -n "$NS_SRC" link set "$VETH_DST" netns "$NS_DST"
fi
ip -n "$NS_SRC" addr replace "$SRC_IP/24" dev "$VETH_SRC"
ip -n "$NS_DST" addr replace "$DST_IP/24" dev "$VETH_DST"
ip -n "$NS_SRC" link set "$VETH_SRC" up
ip -n "$NS_DST" link set "$VETH_DST" up
# the VM's own namespace routes everything else through qemu to the machine's network
[ -n "$(ip route show "$LAB_NET")" ] || ip route add unreachable "$LAB_NET"

# ------------------------------------------------------------------ sshd per namespace
install -d -m 0755 /run/sshd
: > "$LABDIR/ssh/known_hosts.new"
for side in src dst; do
    ns=$(side_ns $side)
    ip=$(side_ip $side)
    d="$LABDIR/ssh/$ns"
    install -d -m 0755 "$d" "$d/sshd_config.d"
    [ -f "$d/ssh_host_ed25519_key" ] ||
        ssh-keygen -q -t ed25519 -N '' -C "zfsrepl-lab-$side" -f "$d/ssh_host_ed25519_key"
    cat > "$d/sshd_config.new" <<EOF
# zfsrepl lab sshd for the $side host (tests/lab/openzfs/guest/setup.sh)
Include $d/sshd_config.d/*.conf
ListenAddress $ip
Port 22
HostKey $d/ssh_host_ed25519_key
PidFile $LABDIR/run/sshd-$ns.pid
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $USERS
# no PAM: its session modules (motd, env, limits ...) cost ~1.7 s a connection under TCG
UsePAM no
UseDNS no
X11Forwarding no
PrintMotd no
PrintLastLog no
MaxStartups 200:30:400
MaxSessions 200
AcceptEnv LANG LC_*
SetEnv PATH=$USER_PATH
Subsystem sftp internal-sftp
EOF
    /usr/sbin/sshd -t -f "$d/sshd_config.new" || die "sshd config test failed for $ns"
    if cmp -s "$d/sshd_config.new" "$d/sshd_config"; then
        rm "$d/sshd_config.new"
        "$HERE/sshd.sh" start $side
    else
        mv "$d/sshd_config.new" "$d/sshd_config"
        "$HERE/sshd.sh" restart $side
    fi
    echo "$ip $(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >> "$LABDIR/ssh/known_hosts.new"
done
mv "$LABDIR/ssh/known_hosts.new" "$LABDIR/ssh/known_hosts"
chmod 0644 "$LABDIR/ssh/known_hosts"
for u in $USERS; do
    kh="$(getent passwd "$u" | cut -d: -f6)/.ssh/known_hosts"
    cp "$LABDIR/ssh/known_hosts" "$kh"
    chown "$u:$GROUP" "$kh"
    chmod 0644 "$kh"
done

# ------------------------------------------------------------------ smoke check
for pair in "src $DST_IP dst $DST_POOL" "dst $SRC_IP src $SRC_POOL"; do
    # shellcheck disable=SC2086  # split into its four words
    set -- $pair
    "$BIN/on-$1" ssh -o BatchMode=yes -o ConnectTimeout=10 "$3@$2" zfs list -H -o name "$4" \
        >/dev/null 2>"$LABDIR/log/smoke.log" ||
        die "smoke check failed: on-$1 ssh $3@$2 zfs list $4: $(cat "$LABDIR/log/smoke.log")"
done
log "ready"
