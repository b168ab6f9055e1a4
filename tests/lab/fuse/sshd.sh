#!/bin/bash
# Control the sshd of one lab "host" (the config is written by setup.sh).
#
#   sshd.sh start   src|dst   start it unless it already runs (in the right namespaces)
#   sshd.sh stop    src|dst   stop it and end the sessions it serves ("host down")
#   sshd.sh restart src|dst   re-read the config; open sessions are kept
#
# Processes are found by the PID file and checked against their command line. Takes no
# lock: setup.sh and teardown.sh call it under theirs, test sessions hold it already.
set -uo pipefail
# shellcheck source=common.sh
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

# in the namespace now named $ns, and in our mount namespace (see setup.sh)
in_place() {  # pid
    [ "$(stat -L -c %i "/proc/$1/ns/net" 2>/dev/null)" = "$(stat -L -c %i "/run/netns/$ns" 2>/dev/null)" ] &&
        [ "$(readlink "/proc/$1/ns/mnt")" = "$(readlink /proc/self/ns/mnt)" ]
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
    local pid
    pid=$(listener)
    if [ -n "$pid" ] && in_place "$pid"; then
        return 0
    fi
    # ours but in a namespace that was deleted and re-created, or in its own copy of the
    # mount table (an older lab): replace it
    [ -n "$pid" ] && stop
    [ -e "/run/netns/$ns" ] || die "no network namespace $ns (run setup.sh)"
    /usr/sbin/sshd -t -f "$cfg" || die "sshd config test failed: $cfg"
    rm -f "$pidf"
    # only the network namespace: sessions share the machine's mounts (see setup.sh);
    # sshd writes its PID file once it listens
    nsenter --net="/run/netns/$ns" /usr/sbin/sshd -f "$cfg" -E "$LABDIR/log/sshd-$ns.log" \
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
