#!/bin/sh
# Start a background child, record both pids, then hang: a timeout must kill the whole group.
sleep 30 &
echo "$$ $!" > "$PIDFILE"
sleep 30
