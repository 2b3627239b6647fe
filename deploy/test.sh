#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite against real RabbitMQ and SoftHSM2.
# Extra arguments go to pytest, e.g. ./deploy/test.sh tests/protocol -x
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/setup.sh
exec "${SETPAY_VENV:-.venv}/bin/python" -m pytest "$@"
