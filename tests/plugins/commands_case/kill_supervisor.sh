#!/bin/sh
# Hostile: leave a process in a new session, then SIGKILL our own supervisor (our parent) and hang. The
# launcher, the supervisor's parent and a subreaper too, gets what the supervisor left and must kill it.
setsid sleep 60 &
echo "$$ $!" > "$PIDFILE"
kill -9 $PPID
sleep 60
