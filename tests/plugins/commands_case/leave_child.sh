#!/bin/sh
# Answer at once but leave a background child holding stdout: the call must still return at once.
sleep 30 &
echo "$$ $!" > "$PIDFILE"
echo '{"ok": true}'
