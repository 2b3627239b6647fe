#!/bin/sh
# The container's start: the token and the broker's vhost and users (both idempotent), then the
# supervisor in the foreground (SIGTERM from `docker stop` drains and stops every child).
set -eu
setpay keystore init
setpay broker init
exec setpay up --foreground "$@"
