#!/usr/bin/env bash
# Take a fresh Debian/Ubuntu machine to ready for setpay, then (with --demo) run the demo.
#   ./deploy/setup.sh            system packages, RabbitMQ, virtualenv, project, token, broker
#   ./deploy/setup.sh --demo     the same, then `setpay demo`
# Idempotent: a second run installs nothing and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SETPAY_VENV:-$ROOT/.venv}
AMQP_URL=${SETPAY_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
RUN_DEMO=0
for arg in "$@"; do
  case "$arg" in
    --demo) RUN_DEMO=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# --- system packages -------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $APT_UPDATED = 0 ]; then say "apt-get update"; $SUDO apt-get update -qq; APT_UPDATED=1; fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
apt_install softhsm2 opensc openssl ca-certificates
# Headless Chromium for the browser tests of the web wallet and POS console (Playwright drives
# this system browser; it never downloads one of its own).
apt_install chromium
# systemd-analyze validates deploy/systemd in the tests (Debian ships it in the systemd package)
command -v systemd-analyze >/dev/null || apt_install systemd

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then apt_install python3; fi
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "setup.sh: setpay needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi

# --- RabbitMQ: install and start only when nothing answers on the configured URL ---------
hostport=$(printf '%s' "$AMQP_URL" | sed -E 's#^amqps?://([^@/]*@)?([^/:]+)(:([0-9]+))?.*#\2 \4#')
AMQP_HOST=${hostport% *}; AMQP_PORT=${hostport#* }; AMQP_PORT=${AMQP_PORT:-5672}
broker_up() { timeout 2 bash -c "exec 3<>/dev/tcp/$AMQP_HOST/$AMQP_PORT" 2>/dev/null; }
if ! broker_up; then
  case "$AMQP_HOST" in
    127.*|localhost) ;;
    *) echo "setup.sh: no broker answers at $AMQP_HOST:$AMQP_PORT (not local: start it there)" >&2; exit 1 ;;
  esac
  apt_install rabbitmq-server
  say "starting RabbitMQ"
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    $SUDO systemctl start rabbitmq-server
  else
    $SUDO rabbitmq-server -detached || true
  fi
  for _ in $(seq 1 60); do broker_up && break; sleep 1; done
  broker_up || { echo "setup.sh: RabbitMQ did not come up on $AMQP_HOST:$AMQP_PORT" >&2; exit 1; }
  command -v rabbitmqctl >/dev/null && $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
say "RabbitMQ answers at $AMQP_HOST:$AMQP_PORT"
# The management HTTP API (127.0.0.1:15672): `setpay broker init` and the tests provision
# through it (rabbitmqctl, an Erlang VM per call, only when it does not answer). Enabling is
# online and idempotent; only on the broker of this machine.
mgmt_up() { timeout 2 bash -c "exec 3<>/dev/tcp/$AMQP_HOST/15672" 2>/dev/null; }
if ! mgmt_up && command -v rabbitmq-plugins >/dev/null; then
  say "enabling the RabbitMQ management plugin"
  $SUDO rabbitmq-plugins enable rabbitmq_management >/dev/null || true
  for _ in $(seq 1 30); do mgmt_up && break; sleep 1; done
fi
mgmt_up && say "RabbitMQ management API answers at $AMQP_HOST:15672" \
  || say "RabbitMQ management API not answering: provisioning falls back to rabbitmqctl"

# --- PostgreSQL (the tests' second store backend): install and start only when nothing answers ---
pg_up() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/5432" 2>/dev/null; }
if [ -z "${SETPAY_TEST_POSTGRES:-}" ] && ! pg_up; then
  apt_install postgresql
  say "starting PostgreSQL"
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    $SUDO systemctl start postgresql
  else
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "setup.sh: PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
  # the tests log in as postgres from 127.0.0.1 without a password (a throw-away database each)
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf | tail -1)
  if ! $SUDO grep -q "setpay-tests" "$hba"; then
    # first matching line wins: put it before Debian's password lines
    $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust # setpay-tests' "$hba"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main reload \
      || true
  fi
fi
say "PostgreSQL answers${SETPAY_TEST_POSTGRES:+ at $SETPAY_TEST_POSTGRES}"

# --- virtualenv and the project --------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then say "creating $VENV"; "$PYTHON" -m venv "$VENV"; fi
stamp="$VENV/.setpay-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing setpay and its dependencies"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test,fast]'
  touch "$stamp"
fi
say "setpay $("$VENV/bin/setpay" --version | cut -d' ' -f2) ready in $VENV"

# --- the project's own SoftHSM2 token (never the system token directory) ---------------
"$VENV/bin/setpay" keystore init

# --- RabbitMQ vhost, one user per actor identity, permissions, policies ------------------
if mgmt_up || command -v rabbitmqctl >/dev/null; then
  $SUDO "$VENV/bin/setpay" broker init
else
  say "no management API nor rabbitmqctl here: run 'setpay broker init' where the broker runs"
fi

if [ $RUN_DEMO = 1 ]; then
  say "running the demo"
  exec "$VENV/bin/setpay" demo
fi
