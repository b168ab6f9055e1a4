#!/bin/bash
# Set up the zfs-fuse replication lab: two "hosts" (network namespaces with their own
# sshd and user) sharing one zfs-fuse daemon, each with its own pool.
#
#   setup.sh              create or repair the lab (idempotent: fills in what is missing)
#   setup.sh --check      exit 0 if the lab is up and working, 1 (saying why) if not
#   setup.sh --sync-code  only refresh the copy of src/zfsrepl that the lab users run
#
# The lab dir is $ZFSREPL_LAB_DIR (default /var/tmp/zfsrepl-lab). Everything created is
# recorded in LABDIR/state, and teardown.sh undoes exactly that. Run as root.
#
# What it sets up (names in common.sh):
#   * packages: apt-get update + install of whatever in $PACKAGES is missing
#   * the zfs-fuse daemon, started only if none runs (its PID is recorded)
#   * pools zfsrepl_src / zfsrepl_dst on sparse files in LABDIR/img, mounted under
#     LABDIR/mnt, which is a shared bind mount (see "mount namespaces" below)
#   * users src and dst (group zfsrepl-lab), ed25519 keys authorized for both users,
#     and a sudo rule for exactly /usr/sbin/zfs and /usr/sbin/zpool
#   * namespaces zr-src (198.51.100.11) and zr-dst (198.51.100.12) joined by a veth
#     pair, an sshd in each, known_hosts for both users
#   * LABDIR/bin: zfs/zpool wrappers (sudo for non-root), zfsrepl (runs the copy in
#     LABDIR/py with /usr/bin/python3), on-src/on-dst
#   * LABDIR/lab.env, read by the Python side (tests/lab/fuse)
#
# Mount namespaces: the hosts' processes (sshd, its sessions, on-src/on-dst) enter only
# the network namespace (nsenter --net) and share the machine's mount table. `ip netns
# exec` would give each a copy of it, and with zfs-fuse a copy breaks things: a copied
# FUSE mount keeps its dataset busy ("dataset is busy", "pool is busy") while the process
# lives, and `zfs unmount` (so also destroy, rename, rollback or receive -F of a mounted
# filesystem) unmounts in the *client's* namespace, which in a copy leaves the real mount
# in place and the dataset busy. LABDIR/mnt is still made a shared mount before any pool
# mounts there, so that a copy made by hand (an `ip netns exec` shell) follows the lab's
# mounts and unmounts instead of pinning them.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(cd "$HERE/../../.." && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

# Copy src/zfsrepl to LABDIR/py-<stamp> and point LABDIR/py at it. The users cannot be
# assumed to read the work tree (CI may clone it under a private folder). The switch is
# an atomic symlink rename, so a zfsrepl process running at that moment keeps a complete
# tree; older copies but the previous one are removed.
sync_code() {
    local pkg="$REPO/src/zfsrepl" new old
    [ -d "$pkg" ] || die "no package at $pkg"
    new=$(mktemp -d "$LABDIR/py-XXXXXX")
    cp -r "$pkg" "$new/zfsrepl"
    find "$new" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
    if [ -d "$LABDIR/py/zfsrepl" ] && diff -r -q -x __pycache__ "$LABDIR/py/zfsrepl" "$new/zfsrepl" >/dev/null; then
        rm -rf "$new"
        return 0
    fi
    # byte-compile as root: the users cannot write __pycache__ there, and every zfsrepl
    # start would otherwise compile the whole package again
    /usr/bin/python3 -m compileall -q "$new" >/dev/null || true
    chmod -R a+rX "$new"
    old=$(readlink "$LABDIR/py" 2>/dev/null || true)
    ln -sfn "$(basename "$new")" "$LABDIR/py.tmp"
    mv -T "$LABDIR/py.tmp" "$LABDIR/py"
    for d in "$LABDIR"/py-*; do
        case "$(basename "$d")" in "$(basename "$new")" | "$old") ;; *) rm -rf "$d" ;; esac
    done
}

# smoke_check: each host's user reaches the other over ssh and sees its pool
smoke_check() {
    local pair
    for pair in "src $DST_IP dst $DST_POOL" "dst $SRC_IP src $SRC_POOL"; do
        # shellcheck disable=SC2086  # split into its four words
        set -- $pair
        "$BIN/on-$1" ssh -o BatchMode=yes -o ConnectTimeout=5 "$3@$2" zfs list -H -o name "$4" \
            9>&- >/dev/null 2>"$LABDIR/log/smoke.log" || {
            echo "on-$1 ssh $3@$2 zfs list $4: $(cat "$LABDIR/log/smoke.log")"
            return 1
        }
    done
}

# check_lab: the lab is complete and alive (a run that was killed leaves its files behind
# with the daemons, mounts and pools gone); prints what is wrong
check_lab() {
    local p side
    [ -e "$LABDIR/lab.env" ] || { echo "no $LABDIR/lab.env"; return 1; }
    zfs_fuse_alive || { echo "zfs-fuse is not running"; return 1; }
    for p in "$SRC_POOL" "$DST_POOL"; do
        [ "$(zpool list -H -o health "$p" 2>/dev/null)" = ONLINE ] || { echo "pool $p is not online"; return 1; }
    done
    for side in src dst; do
        pid_is "$(cat "$LABDIR/run/sshd-$(side_ns $side).pid" 2>/dev/null)" sshd ||
            { echo "the sshd of $side is not running"; return 1; }
    done
    smoke_check
}

if [ "${1:-}" = --check ]; then
    lab_lock
    check_lab
    exit
fi

if [ "${1:-}" = --sync-code ]; then
    [ -d "$LABDIR/bin" ] || die "no lab at $LABDIR (run setup.sh first)"
    sync_code
    exit 0
fi
[ $# -eq 0 ] || die "usage: setup.sh [--check | --sync-code]"

lab_lock
install -d -m 0755 "$LABDIR" "$LABDIR"/{img,mnt,run,ssh,log,bin,work}
install -d -m 0700 "$STATE"

# ------------------------------------------------------------------ packages
install_packages() {
    local need=() p policy=
    for p in $PACKAGES; do
        dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || need+=("$p")
    done
    [ ${#need[@]} -eq 0 ] && return 0
    log "installing ${need[*]}"
    # keep apt from starting the packages' own services (a host-wide sshd on port 22,
    # a zfs-fuse daemon nobody would stop): the lab starts what it needs itself
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        policy=1
    fi
    local rc=0
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${need[@]}"; } >"$LABDIR/log/apt.log" 2>&1 || rc=$?
    [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
    [ $rc -eq 0 ] || { tail -20 "$LABDIR/log/apt.log" >&2; die "apt-get failed"; }
}
install_packages

# ------------------------------------------------------------------ zfs-fuse daemon
daemon_started=
if zfs_fuse_alive; then
    :   # shared daemon: never ours to stop unless we started it
else
    # A daemon that was killed leaves its FUSE mounts behind, dead ("transport endpoint
    # is not connected"): they would block the new mounts at the same places.
    awk -v m="$LABDIR/mnt/" 'index($5, m) == 1 && $0 ~ / - fuse\.zfs / { print $5 }' /proc/self/mountinfo |
        sort -r | while read -r m; do
            log "unmounting $m, left by a zfs-fuse that is gone"
            umount -l "$m" || true
        done
    log "starting zfs-fuse"
    daemon_started=1
    rm -f "$LABDIR/run/zfs-fuse.pid"
    # the daemon's socket and lock dirs, for teardown to remove with it
    new_dirs=$(for d in /var/run/zfs /var/lock/zfs; do [ -e "$d" ] || echo "$d"; done)
    # it daemonizes; a second instance would exit 1 silently (lock /var/lock/zfs/zfs_lock)
    zfs-fuse --pidfile "$LABDIR/run/zfs-fuse.pid" </dev/null >/dev/null 2>&1 9>&- \
        || die "zfs-fuse exited with $? (see syslog)"
    for _ in $(seq 1 50); do [ -s "$LABDIR/run/zfs-fuse.pid" ] && break; sleep 0.1; done
    [ -s "$LABDIR/run/zfs-fuse.pid" ] || die "zfs-fuse wrote no PID file"
    cp "$LABDIR/run/zfs-fuse.pid" "$STATE/zfs-fuse.started"
    echo "$new_dirs" > "$STATE/zfs-fuse.dirs"
fi
for _ in $(seq 1 50); do zpool list >/dev/null 2>&1 && break; sleep 0.1; done
zpool list >/dev/null 2>&1 || die "the zfs-fuse daemon does not answer"

# ------------------------------------------------------------------ shared mount dir
if ! mountpoint -q "$LABDIR/mnt"; then
    if awk -v m="$LABDIR/mnt/" 'index($5, m) == 1' /proc/self/mountinfo | grep -q .; then
        die "datasets are mounted under $LABDIR/mnt, which is not a shared mount: run teardown.sh"
    fi
    mount --bind "$LABDIR/mnt" "$LABDIR/mnt"
    touch "$STATE/mnt.bind"
fi
mount --make-shared "$LABDIR/mnt"

# ------------------------------------------------------------------ pools
# A pool that is not imported and online is created afresh: its image (if any) is what a
# killed run left, possibly half-written, and the tests make their own datasets anyway.
# cachefile=none keeps the pools out of zfs-fuse's zpool.cache, so that a daemon started
# later never brings back a pool whose lab is gone.
make_pool() {  # pool
    local p=$1 img="$LABDIR/img/$1.img" health
    health=$(zpool list -H -o health "$p" 2>/dev/null) || health=
    if [ -n "$health" ]; then
        zpool status "$p" | grep -qF "$img" || die "pool $p exists but is not backed by $img"
        # a daemon started just now brought it back from an old zpool.cache: stale
        if [ "$health" = ONLINE ] && [ -z "$daemon_started" ]; then
            [ -f "$STATE/pool.$p" ] || echo "$img" > "$STATE/pool.$p"
            return 0
        fi
        log "destroying pool $p ($health), left by an earlier run"
        zpool destroy -f "$p" || die "cannot destroy the $health pool $p"
    fi
    if [ -e "$img" ]; then
        log "discarding $img, left by an earlier run"
        rm -f "$img"
    fi
    # the directories of the old pool's mountpoints would make FUSE refuse to mount here
    if [ -d "$LABDIR/mnt/$p" ] && ! mountpoint -q "$LABDIR/mnt/$p"; then
        rm -rf --one-file-system "${LABDIR:?}/mnt/$p"
    fi
    log "creating pool $p ($POOL_SIZE)"
    truncate -s "$POOL_SIZE" "$img"
    echo "$img" > "$STATE/pool.$p"
    zpool create -o cachefile=none -m "$LABDIR/mnt/$p" "$p" "$img" 2>&1 |
        { grep -v '^Defaulting to 4K' || true; }
    [ "$(zpool list -H -o health "$p" 2>/dev/null)" = ONLINE ] || die "zpool create $p failed"
}
make_pool "$SRC_POOL"
make_pool "$DST_POOL"

# ------------------------------------------------------------------ users, keys, sudo
if ! getent group "$GROUP" >/dev/null; then
    groupadd "$GROUP"
    touch "$STATE/group"
fi
for u in $USERS; do
    if ! id "$u" >/dev/null 2>&1; then
        log "creating user $u"
        # password field stays '!': sshd with UsePAM still accepts keys, and only
        # password tests set a password, temporarily
        useradd -m -s /bin/bash -g "$GROUP" "$u"
        touch "$STATE/user.$u"
    fi
    home=$(getent passwd "$u" | cut -d: -f6)
    install -d -m 0700 -o "$u" -g "$(id -g "$u")" "$home/.ssh"
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
    chown "$u:$(id -g "$u")" "$ak"
    chmod 0600 "$ak"
done
# The daemon's socket is root-only, and whoever can open it controls every pool without
# any check, so the users get exactly the two commands through sudo instead.
tmp=$(mktemp)
cat > "$tmp" <<'EOF'
# zfsrepl test lab (tests/lab/fuse/setup.sh); removed by teardown.sh
Defaults:src,dst !requiretty
src,dst ALL=(root) NOPASSWD: /usr/sbin/zfs, /usr/sbin/zpool
EOF
visudo -cqf "$tmp" || die "sudoers syntax check failed"
cmp -s "$tmp" "$SUDOERS" || install -m 0440 "$tmp" "$SUDOERS"
touch "$STATE/sudoers"
rm -f "$tmp"

# ------------------------------------------------------------------ wrappers
write_exe() {  # path; content on stdin
    cat > "$1.tmp"
    chmod 0755 "$1.tmp"
    mv "$1.tmp" "$1"
}
for c in zfs zpool; do
    write_exe "$BIN/$c" <<EOF
#!/bin/sh
# zfs-fuse's socket is root-only: other users go through the lab's sudo rule
if [ "\$(id -u)" = 0 ]; then exec /usr/sbin/$c "\$@"; fi
exec sudo -n /usr/sbin/$c "\$@"
EOF
done
write_exe "$BIN/zfsrepl" <<EOF
#!/bin/sh
# the lab's copy of the package under test (setup.sh --sync-code), on the users' runtime
PYTHONPATH=$LABDIR/py PYTHONSAFEPATH=1 exec /usr/bin/python3 -m zfsrepl "\$@"
EOF
# on-src / on-dst [--root] CMD...: run CMD on that "host", in its network namespace, as
# its user (or root), with a clean environment and LABDIR/bin first on PATH. Every step
# execs (setpriv, unlike runuser, does not stay around as a parent), so the PID a caller
# sees is CMD's own and signals reach it directly.
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
exec nsenter --net=/run/netns/$ns setpriv --reuid=$side --regid=$(id -g $side) --init-groups \\
    --reset-env env LANG=C.UTF-8 PATH=$USER_PATH "\$@"
EOF
done

# ------------------------------------------------------------------ network
for ns in "$NS_SRC" "$NS_DST"; do
    if [ ! -e "/run/netns/$ns" ]; then
        ip netns add "$ns"
        touch "$STATE/netns.$ns"
    fi
    ip -n "$ns" link set lo up
    nsenter --net="/run/netns/$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 >/dev/null 2>&1 || true
done
if ! ip -n "$NS_SRC" link show "$VETH_SRC" >/dev/null 2>&1 ||
    ! ip -n "$NS_DST" link show "$VETH_DST" >/dev/null 2>&1; then
    ip -n "$NS_SRC" link del "$VETH_SRC" 2>/dev/null || true
    ip -n "$NS_DST" link del "$VETH_DST" 2>/dev/null || true
    # created inside zr-src and one end moved: it never sits in the host namespace
    ip -n "$NS_SRC" link add "$VETH_SRC" type veth peer name "$VETH_DST"
    ip -n "$NS_SRC" link set "$VETH_DST" netns "$NS_DST"
fi
ip -n "$NS_SRC" addr replace "$SRC_IP/24" dev "$VETH_SRC"
ip -n "$NS_DST" addr replace "$DST_IP/24" dev "$VETH_DST"
ip -n "$NS_SRC" link set "$VETH_SRC" up
ip -n "$NS_DST" link set "$VETH_DST" up
# In the host namespace the lab addresses must fail at once rather than follow the
# default route off the machine (a command that forgot the namespace, say).
if [ -z "$(ip route show "$LAB_NET")" ]; then
    ip route add unreachable "$LAB_NET"
    touch "$STATE/route.guard"
fi

# ------------------------------------------------------------------ sshd per namespace
if [ ! -d /run/sshd ]; then    # sshd's privilege separation dir
    install -d -m 0755 /run/sshd
    touch "$STATE/run-sshd"
fi
: > "$LABDIR/ssh/known_hosts.new"
for side in src dst; do
    ns=$(side_ns $side)
    ip=$(side_ip $side)
    d="$LABDIR/ssh/$ns"
    install -d -m 0755 "$d" "$d/sshd_config.d"
    [ -f "$d/ssh_host_ed25519_key" ] ||
        ssh-keygen -q -t ed25519 -N '' -C "zfsrepl-lab-$side" -f "$d/ssh_host_ed25519_key"
    # The first value of an option wins, so drop-ins (the password test's) come first.
    cat > "$d/sshd_config.new" <<EOF
# zfsrepl lab sshd for the $side host (generated by tests/lab/fuse/setup.sh)
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
UsePAM yes
UseDNS no
X11Forwarding no
PrintMotd no
PrintLastLog no
# tests open many connections at once (parallel transfers, ControlMaster sessions)
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
    touch "$kh"
    for ip in "$SRC_IP" "$DST_IP"; do ssh-keygen -q -R "$ip" -f "$kh" >/dev/null 2>&1 || true; done
    cat "$LABDIR/ssh/known_hosts" >> "$kh"
    rm -f "$kh.old"
    chown "$u:$(id -g "$u")" "$kh"
    chmod 0644 "$kh"
done

# ------------------------------------------------------------------ code, env file
sync_code
cat > "$LABDIR/lab.env.tmp" <<EOF
# zfsrepl lab (tests/lab/fuse/setup.sh). KEY=VALUE lines; in a shell: set -a; . lab.env; set +a
ZFSREPL_LAB_BACKEND=fuse
ZFSREPL_LAB_DIR=$LABDIR
LAB_BIN=$BIN
LAB_MNT=$LABDIR/mnt
LAB_WORK=$LABDIR/work
KNOWN_HOSTS=$LABDIR/ssh/known_hosts
SRC_POOL=$SRC_POOL
DST_POOL=$DST_POOL
SRC_NS=$NS_SRC
DST_NS=$NS_DST
SRC_IP=$SRC_IP
DST_IP=$DST_IP
SRC_USER=src
DST_USER=dst
# run CMD as src on the source host: \$LAB_BIN/on-src CMD (as root there: on-src --root CMD)
EOF
mv "$LABDIR/lab.env.tmp" "$LABDIR/lab.env"

# ------------------------------------------------------------------ smoke check
why=$(smoke_check) || die "smoke check failed: $why"
log "ready: $LABDIR (source $LABDIR/lab.env)"
