#!/usr/bin/env bash
# Smoke test of a built worker: bash scripts/smoke-binary.sh dist/peekaping-worker
#
# Checks --version; that every executor imports inside the bundle; `check tcp` against a local
# listener (and `check http`/https against local servers once the http executor exists); then runs
# the binary as a worker against a private redis-server on a free port, enqueues a
# `monitor:healthcheck` task the way the Go producer does, expects the ingest task with status 1 and
# "TCP port N is open", sends SIGTERM and expects exit 0 with the server's keys removed.
# Fails (non-zero) on anything broken. Needs redis-server on PATH.
#
# The test itself runs in Python with redis + protobuf (it uses the project's asynq_protocol client):
# SMOKE_PYTHON if set, else the binary build's venv, else the test venv (.venv), else python3.
# The argument may also be a command line, e.g. "python3 dist/peekaping-worker.pyz".
# SMOKE_TIMEOUT_SCALE=10 stretches every time limit (for runs under qemu emulation).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash scripts/smoke-binary.sh BINARY" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
target=$1
if [ -e "$target" ]; then
  target=$(cd "$(dirname "$target")" && pwd)/$(basename "$target")
fi

py=${SMOKE_PYTHON:-}
if [ -z "$py" ]; then
  for candidate in "${BUILD_VENV:-$ROOT/build/venv-binary}/bin/python" "$ROOT/.venv/bin/python" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import redis, google.protobuf' 2>/dev/null; then
      py=$candidate
      break
    fi
  done
fi
if [ -z "$py" ]; then
  echo "smoke: FAIL no Python with redis and protobuf found (set SMOKE_PYTHON, or run scripts/build-binary.sh)" >&2
  exit 1
fi
# The Python that drives the test must not import the project from anywhere but this tree.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$ROOT/scripts/smoke_binary.py" "$target"
