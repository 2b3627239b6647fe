#!/bin/sh
# The container's start. `setpay demo` brings up the test environment as on a developer machine
# (the token, `broker init` through the management API, the supervisor and every party, the CA
# hierarchy, the issuer's accounts, the parties' certificates), runs the demo's purchases once
# and leaves the environment running under its supervisor. This shell then waits on the
# supervisor; `docker stop` (SIGTERM) runs `setpay down`, which drains every child.
set -eu
setpay demo
pid=$(cat "$SETPAY_DATA_DIR/run/supervisor.pid")
trap 'setpay down; exit 0' TERM INT
while kill -0 "$pid" 2>/dev/null; do
  sleep 2 &
  wait $!
done
echo "the supervisor (pid $pid) exited" >&2
exit 1
