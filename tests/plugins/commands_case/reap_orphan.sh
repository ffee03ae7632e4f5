#!/bin/sh
# Orphan a short-lived process (double fork into a new session), then watch it: once it exits, its zombie must
# be reaped at once (by the subreaper it was reparented to), while this program still runs.
setsid sh -c 'sleep 0.2 & echo $! > "$PIDFILE"' &
while [ ! -s "$PIDFILE" ]; do sleep 0.01; done
orphan=$(cat "$PIDFILE")
i=0
while [ -e "/proc/$orphan" ] && [ $i -lt 300 ]; do sleep 0.01; i=$((i+1)); done
if [ -e "/proc/$orphan" ]; then echo '{"reaped": false}'; else echo '{"reaped": true}'; fi
