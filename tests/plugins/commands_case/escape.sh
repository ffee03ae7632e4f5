#!/bin/sh
# Start a process that leaves this program's process group and session, one of two ways ($HOW):
#   setsid - `setsid sleep 60 &`: a new session, still this program's child;
#   double - `setsid sh -c 'sleep 60 &'`: a double fork into a new session whose leader exits at once, so the
#            sleep is orphaned (reparented to the nearest subreaper, or to init if there is none).
# Once it has really left our session, write "<its pid> <its session> <our session>" to $PIDFILE; then
# answer at once ($THEN unset), hang past the call's timeout ($THEN=hang), or wait for the file $GO to
# appear and say whether that process is still alive ($THEN=wait).
sid() { cut -d' ' -f6 "/proc/$1/stat" 2>/dev/null; }
case "$HOW" in
  setsid)
    setsid sleep 60 &
    bg=$! ;;
  double)
    setsid sh -c 'sleep 60 & echo $! > "$PIDFILE.inner"' &
    while [ ! -s "$PIDFILE.inner" ]; do sleep 0.01; done
    bg=$(cat "$PIDFILE.inner") ;;
  *) echo "HOW must be setsid or double" >&2; exit 2 ;;
esac
while [ "$(sid "$bg")" = "$(sid $$)" ]; do sleep 0.01; done
echo "$bg $(sid "$bg") $(sid $$)" > "$PIDFILE.tmp" && mv "$PIDFILE.tmp" "$PIDFILE"
case "$THEN" in
  hang) sleep 60 ;;
  wait)
    while [ ! -e "$GO" ]; do sleep 0.01; done
    if kill -0 "$bg" 2>/dev/null; then echo '{"alive": true}'; else echo '{"alive": false}'; fi
    exit 0 ;;
esac
echo '{"ok": true}'
