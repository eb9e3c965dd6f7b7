#!/usr/bin/env bash
# Builds the single-file worker binary: dist/peekaping-worker (PyInstaller one-file, see build.spec).
#
#   bash scripts/build-binary.sh
#
# A clean virtualenv is made for every build (PyInstaller bundles whatever optional modules it finds
# in the build environment, so the environment holds the project's runtime dependencies, PyInstaller
# and nothing else). Settings, all optional:
#   PYTHON=python3.11          interpreter to build with; it must have a shared libpython
#   BUILD_VENV=build/venv-binary   where the build virtualenv goes (recreated each time)
#   BUILD_WITHOUT="uvloop"     runtime dependencies to leave out (only the optional accelerators
#                              uvloop and hiredis may be: the worker falls back to asyncio and to
#                              redis-py's own parser; used where no wheel exists, e.g. armv7)
#   PYINSTALLER_REQ="pyinstaller==6.22.3"
#   PEEKAPING_BINARY_NAME=peekaping-worker   output file name under dist/
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=${BUILD_VENV:-$ROOT/build/venv-binary}
WITHOUT=${BUILD_WITHOUT:-}
PYINSTALLER_REQ=${PYINSTALLER_REQ:-pyinstaller==6.22.3}
NAME=${PEEKAPING_BINARY_NAME:-peekaping-worker}
started=$(date +%s)

shared=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED") or 0)')
if [ "$shared" != "1" ]; then
  echo "build-binary: $PY has no shared libpython (built without --enable-shared); PyInstaller needs one" >&2
  exit 1
fi

rm -rf "$VENV"
"$PY" -m venv "$VENV"
# The runtime dependencies, read from pyproject.toml (the project itself is not installed: build.spec
# takes worker.py, asynq_protocol.py and executors/ from this source tree).
"$VENV/bin/python" - "$WITHOUT" > "$VENV/requirements.txt" <<'EOF'
import re, sys, tomllib
without = {n.lower().replace("_", "-") for n in sys.argv[1].replace(",", " ").split()}
allowed = {"uvloop", "hiredis"}
if without - allowed:
    sys.exit(f"build-binary: BUILD_WITHOUT may only name {sorted(allowed)}, got {sorted(without - allowed)}")
with open("pyproject.toml", "rb") as fh:
    meta = tomllib.load(fh)
# the runtime dependencies plus the extras every build carries (database and broker drivers)
deps = meta["project"]["dependencies"] + [
    dep for extra in meta["tool"]["peekaping-worker"]["bundled-extras"]
    for dep in meta["project"]["optional-dependencies"][extra]]
for dep in deps:
    name = re.match(r"[A-Za-z0-9._-]+", dep).group(0).lower().replace("_", "-")
    if name not in without:
        print(dep)
EOF
echo "build-binary: runtime dependencies:" $(grep -v '^#' "$VENV/requirements.txt" | tr '\n' ' ')
# certifi: the CA bundle the binary falls back on where the host has none (freeze/rth_ca_roots.py).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$VENV/requirements.txt" certifi "$PYINSTALLER_REQ"

rm -rf "build/pyinstaller" "dist/$NAME"
PEEKAPING_BINARY_NAME="$NAME" "$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
  --distpath dist --workpath build/pyinstaller build.spec

bin="dist/$NAME"
test -x "$bin"
bytes=$(stat -c %s "$bin")
echo "build-binary: built $bin: $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }')), $(uname -m), in $(( $(date +%s) - started )) s"
"$bin" --version | sed 's/^/build-binary:   /'
