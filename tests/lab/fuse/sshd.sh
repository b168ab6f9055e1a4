#!/bin/bash
# Control the sshd of one lab "host" (the config is written by setup.sh).
#
#   sshd.sh start   src|dst   start it unless it already runs (in the current namespace)
#   sshd.sh stop    src|dst   stop it and end the sessions it serves ("host down")
#   sshd.sh restart src|dst   re-read the config; open sessions are kept
#
# Processes are found by the PID file and checked against their command line.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/common.sh"

action=${1:-}
side=${2:-}
case "$side" in src | dst) ;; *) die "usage: sshd.sh start|stop|restart src|dst" ;; esac
ns=$(side_ns "$side")
cfg="$LABDIR/ssh/$ns/sshd_config"
pidf="$LABDIR/run/sshd-$ns.pid"

# the listener's PID if it is our sshd (possibly in an older namespace of the same name)
listener() {
    local pid
    pid=$(cat "$pidf" 2>/dev/null) || return 0
    pid_is "$pid" "$cfg" && echo "$pid"
}

in_current_ns() {  # pid
    [ "$(stat -L -c %i "/proc/$1/ns/net" 2>/dev/null)" = "$(stat -L -c %i "/run/netns/$ns" 2>/dev/null)" ]
}

stop() {  # [keep-sessions]
    local pid
    pid=$(listener)
    if [ -n "$pid" ]; then
        if [ -n "${1:-}" ]; then
            stop_pids "$pid"
        else
            # shellcheck disable=SC2046  # one PID per word
            stop_pids "$pid" $(descendants "$pid")
        fi
    fi
    rm -f "$pidf"
}

start() {
    local pid
    pid=$(listener)
    if [ -n "$pid" ] && in_current_ns "$pid"; then
        return 0
    fi
    # ours but serving a namespace that was deleted and re-created: replace it
    [ -n "$pid" ] && stop
    [ -e "/run/netns/$ns" ] || die "no network namespace $ns (run setup.sh)"
    /usr/sbin/sshd -t -f "$cfg" || die "sshd config test failed: $cfg"
    rm -f "$pidf"
    # unpin: the sshd and its sessions get a mount table without other pools' mounts;
    # sshd writes its PID file once it listens
    ip netns exec "$ns" "$BIN/unpin" /usr/sbin/sshd -f "$cfg" -E "$LABDIR/log/sshd-$ns.log" \
        </dev/null >/dev/null 2>>"$LABDIR/log/sshd-$ns.log" 9>&-
    for _ in $(seq 1 100); do
        [ -s "$pidf" ] && return 0
        sleep 0.05
    done
    die "sshd in $ns did not start (see $LABDIR/log/sshd-$ns.log)"
}

case "$action" in
    start) start ;;
    stop) stop ;;
    restart) stop keep-sessions; start ;;
    *) die "usage: sshd.sh start|stop|restart src|dst" ;;
esac
