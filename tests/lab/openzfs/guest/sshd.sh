#!/bin/bash
# Inside the VM: control the sshd of one lab "host" (config written by setup.sh).
#
#   sshd.sh start|stop|restart src|dst
#   sshd.sh password-on src|dst PASSWORD   accept passwords; the user gets PASSWORD
#   sshd.sh password-off src|dst           undo password-on (the saved hash comes back)
set -uo pipefail
# shellcheck source=common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

action=${1:-}
side=${2:-}
case "$side" in src | dst) ;; *) die "usage: sshd.sh start|stop|restart|password-on|password-off src|dst" ;; esac
ns=$(side_ns "$side")
cfg="$LABDIR/ssh/$ns/sshd_config"
pidf="$LABDIR/run/sshd-$ns.pid"

listener() {
    local pid
    pid=$(cat "$pidf" 2>/dev/null) || return 0
    pid_is "$pid" "$cfg" && echo "$pid"
}

stop() {  # [keep-sessions]
    local pid
    pid=$(listener)
    if [ -n "$pid" ]; then
        if [ -n "${1:-}" ]; then
            stop_pids 5 "$pid"
        else
            # shellcheck disable=SC2046  # one PID per word
            stop_pids 5 "$pid" $(descendants "$pid")
        fi
    fi
    rm -f "$pidf"
}

start() {
    [ -n "$(listener)" ] && return 0
    /usr/sbin/sshd -t -f "$cfg" || die "sshd config test failed: $cfg"
    rm -f "$pidf"
    # only the network namespace: the VM's kernel ZFS mounts are the same for everyone
    nsenter --net="/run/netns/$ns" /usr/sbin/sshd -f "$cfg" -E "$LABDIR/log/sshd-$ns.log" \
        </dev/null >/dev/null 2>>"$LABDIR/log/sshd-$ns.log"
    for _ in $(seq 1 200); do
        [ -s "$pidf" ] && return 0
        sleep 0.05
    done
    die "sshd in $ns did not start (see $LABDIR/log/sshd-$ns.log)"
}

dropin="$LABDIR/ssh/$ns/sshd_config.d/50-password.conf"
saved="$LABDIR/run/shadow-$side"
case "$action" in
    start) start ;;
    stop) stop ;;
    restart) stop keep-sessions; start ;;
    password-on)
        # the hash and the day of the last change, which chpasswd stamps with today
        [ -f "$saved" ] || getent shadow "$side" | cut -d: -f2,3 > "$saved"
        echo "PasswordAuthentication yes" > "$dropin"
        printf '%s:%s\n' "$side" "${3:?password}" | chpasswd
        stop keep-sessions; start ;;
    password-off)
        rm -f "$dropin"
        if [ -f "$saved" ]; then
            IFS=: read -r hash day < "$saved"
            usermod -p "$hash" "$side" && { [ -z "$day" ] || chage -d "$day" "$side"; } &&
                rm -f "$saved"
        fi
        stop keep-sessions; start ;;
    *) die "usage: sshd.sh start|stop|restart|password-on|password-off src|dst" ;;
esac
