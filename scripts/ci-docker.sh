#!/usr/bin/env bash
# Installs what tests/test_docker_executor.py needs: Debian's docker.io (dockerd, containerd, runc and
# the docker CLI) and busybox-static (the one static binary the test image is built from).
#
# Nothing is left running: the tests start their own dockerd once per module (private Unix socket,
# mutual-TLS port on 127.0.0.1, private data root, exec root and pidfile, vfs storage, no iptables,
# no bridge) and stop it and remove its directory at teardown. The packages' own service start is
# refused during the install, so no system dockerd appears on /var/run/docker.sock either.
# Needs root. Idempotent: installs only what is missing.
set -euo pipefail

static_busybox() {
  [ -x /bin/busybox ] && ! LC_ALL=C grep -qa '/ld-linux' /bin/busybox
}

packages=()
for tool in dockerd containerd runc; do
  command -v "$tool" >/dev/null 2>&1 || { packages+=(docker.io); break; }
done
static_busybox || packages+=(busybox-static)

if [ "${#packages[@]}" -gt 0 ]; then
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then  # refuse service starts while the packages install, then remove the refusal
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

dockerd --version
static_busybox || { echo "ci-docker.sh: /bin/busybox is not the static busybox" >&2; exit 1; }
