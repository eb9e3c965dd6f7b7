#!/usr/bin/env bash
# Release build of one architecture, run as root inside the build container by .github/workflows/release.yml:
#
#   docker run --rm -v "$PWD:/src" -w /src python:3.11-slim-bookworm bash scripts/release-build.sh x86_64
#
# Installs the build and smoke-test tools, builds dist/peekaping-worker (scripts/build-binary.sh),
# smoke-tests it (scripts/smoke-binary.sh), then writes dist/release/peekaping-worker-linux-ARCH and its
# .sha256. On armv7 (no wheels for PyInstaller, hiredis, uvloop, cffi) a compiler is installed and uvloop
# is left out: compiling libuv under qemu takes too long, and the worker runs on asyncio's loop.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: release-build.sh ARCH (x86_64, arm64, armv7)}
machine=$(uname -m)
case "$arch:$machine" in
  x86_64:x86_64 | arm64:aarch64 | armv7:armv7l | armv7:armv8l) ;;
  *) echo "release-build: asked for $arch but this machine is $machine" >&2; exit 1 ;;
esac

packages="binutils redis-server openssl"
if [ "$arch" = armv7 ]; then
  packages="$packages gcc libc6-dev zlib1g-dev libffi-dev"  # cffi (for cryptography) has no armv7 wheel
  export BUILD_WITHOUT=${BUILD_WITHOUT:-uvloop}
  export SMOKE_TIMEOUT_SCALE=${SMOKE_TIMEOUT_SCALE:-10}
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $packages >/dev/null
ldd --version | sed -n 1p  # (sed reads it all: no SIGPIPE under pipefail)

bash scripts/build-binary.sh
bash scripts/smoke-binary.sh dist/peekaping-worker

name=peekaping-worker-linux-$arch
mkdir -p dist/release
cp dist/peekaping-worker "dist/release/$name"
(cd dist/release && sha256sum "$name" > "$name.sha256" && cat "$name.sha256")
