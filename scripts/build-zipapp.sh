#!/usr/bin/env bash
# Builds the zipapp variant: dist/peekaping-worker.pyz, for hosts that have Python >= 3.11.
#
#   bash scripts/build-zipapp.sh
#   ./dist/peekaping-worker.pyz --version        (or: python3 dist/peekaping-worker.pyz ...)
#
# A stdlib `zipapp` (no shiv/pex at run time) holding the worker and every runtime dependency that has
# a pure-Python wheel, each module as source plus a .pyc compiled by the build interpreter. Nothing
# is unpacked at run time, and the same file runs on any CPU architecture and libc (armv7 routers,
# musl) and any CPython >= 3.11 (on the build's Python version the .pyc files are used, on another
# the sources, compiled at each start).
# C extensions cannot be imported from a zip, so:
#   * protobuf is vendored as its pure-Python wheel (the worker's few small messages don't need upb);
#   * the optional accelerators hiredis and uvloop are not vendored; they are used when the host
#     Python has them installed;
#   * a runtime dependency with no pure-Python wheel (cryptography, for the https checks' tls_info)
#     is not vendored either: it is imported from the host Python (pip install it there); the pyz
#     says at start which ones are missing, and the executors that need them fail until they are.
# build/zipapp/host-requirements.txt lists those host-provided requirements (empty when there are none).
# Settings: PYTHON=python3 (the build interpreter; its version gets the .pyc files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAGE=build/zipapp
OUT=dist/peekaping-worker.pyz
started=$(date +%s)
pipq() { PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip "$@" -q; }

rm -rf "$STAGE" "$OUT"
mkdir -p "$STAGE/app" "$STAGE/wheels" dist
"$PY" - > "$STAGE/requirements.txt" <<'EOF'
import re, tomllib
OPTIONAL_COMPILED = {"hiredis", "uvloop"}  # accelerators the worker runs without
with open("pyproject.toml", "rb") as fh:
    meta = tomllib.load(fh)
# the runtime dependencies plus the extras every build carries (database and broker drivers)
deps = meta["project"]["dependencies"] + [
    dep for extra in meta["tool"]["peekaping-worker"]["bundled-extras"]
    for dep in meta["project"]["optional-dependencies"][extra]]
for dep in deps:
    name = re.match(r"[A-Za-z0-9._-]+", dep).group(0).lower().replace("_", "-")
    if name not in OPTIONAL_COMPILED:
        print(dep)
# redis needs async-timeout on Python < 3.11.3; pip evaluates python_full_version for this machine's
# Python, not the oldest one the file may meet, so it is named here (pure Python, 10 kB).
print("async-timeout>=4.0.3")
EOF

# 1. Resolve the full set of distributions (names and versions) for this machine.
pipq install --dry-run --ignore-installed --report "$STAGE/resolved.json" -r "$STAGE/requirements.txt"
"$PY" - "$STAGE/resolved.json" > "$STAGE/resolved.txt" <<'EOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(item["metadata"]["name"], item["metadata"]["version"])
EOF

# 2. Each one as a pure-Python wheel (py3-none-any), whatever this machine is; those without one
#    are left to the host Python.
: > "$STAGE/host.txt"
while read -r name version; do
  if ! pipq download --no-deps --only-binary=:all: --platform any --implementation py --python-version 3.11 \
       -d "$STAGE/wheels" "$name==$version" 2>/dev/null; then
    echo "$name $version" >> "$STAGE/host.txt"
  fi
done < "$STAGE/resolved.txt"
echo "build-zipapp: vendored:" $(ls "$STAGE/wheels" | sed 's/-py.*//' | tr '\n' ' ')
if [ -s "$STAGE/host.txt" ]; then
  echo "build-zipapp: compiled, left to the host Python:" $(tr '\n' ' ' < "$STAGE/host.txt")
fi
pipq install --no-deps --no-index --no-compile --target "$STAGE/app" "$STAGE"/wheels/*.whl

# 3. The worker itself, the entry point, and the list of host-provided dependencies.
cp worker.py healthcheck.py asynq_protocol.py asynq_scripts.py pending_watch.py settings.py redis_checks.py cli.py router.py sites_rules.py metrics.py doctor.py housekeeping.py redis_wire.py "$STAGE/app/"
mkdir -p "$STAGE/app/executors"
cp executors/*.py "$STAGE/app/executors/"
for sub in executors/*/; do
  if [ -f "$sub/__init__.py" ]; then cp -r "$sub" "$STAGE/app/executors/"; fi
done
"$PY" - "$STAGE/host.txt" "$STAGE/requirements.txt" > "$STAGE/app/_pyz_host_deps.py" <<'EOF'
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
direct = {}
for line in open(sys.argv[2]):
    req = line.split(";")[0].strip()
    if req:
        direct[norm(re.match(r"[A-Za-z0-9._-]+", req).group(0))] = req
print('"""Runtime dependencies the zipapp does not carry (compiled): import name -> pip requirement."""')
print("HOST_DEPENDENCIES = {")
for line in open(sys.argv[1]):
    name = line.split()[0]
    if norm(name) not in direct:
        continue  # a dependency of a host-provided package: pip brings it along with that one
    module = {"pyyaml": "yaml"}.get(norm(name), norm(name).replace("-", "_"))
    print(f"    {module!r}: {direct[norm(name)]!r},")
print("}")
EOF
"$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); from _pyz_host_deps import HOST_DEPENDENCIES as d; print("\n".join(d.values()))' \
  "$STAGE/app" > "$STAGE/host-requirements.txt"
cat > "$STAGE/app/__main__.py" <<'EOF'
import os
import sys

if sys.version_info < (3, 11):
    sys.exit(f"peekaping-worker needs Python 3.11 or newer, this is {sys.version.split()[0]}")
# protobuf's C implementation cannot be imported from a zip, and a host copy may be another version.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")


def _missing_host_dependencies():
    """Host-provided requirements that this Python lacks, or has in a version below the minimum."""
    import importlib.metadata
    import importlib.util
    import re

    from _pyz_host_deps import HOST_DEPENDENCIES

    def numbers(text):
        return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])

    missing = []
    for module, req in HOST_DEPENDENCIES.items():
        if importlib.util.find_spec(module) is None:
            missing.append(req)
            continue
        name, _, minimum = req.partition(">=")
        try:
            if minimum and numbers(importlib.metadata.version(name)) < numbers(minimum.split(",")[0]):
                missing.append(req)
        except importlib.metadata.PackageNotFoundError:
            pass
    return missing


if not {"-h", "--help"} & set(sys.argv[1:]):
    _missing = _missing_host_dependencies()
    if _missing:
        print(f"peekaping-worker.pyz: {sys.executable} lacks {', '.join(_missing)} (compiled, not in the zipapp); "
              f"the executors that need them fail until `{sys.executable} -m pip install "
              f"{' '.join(repr(m) for m in _missing)}`", file=sys.stderr)

from worker import main

sys.exit(main())
EOF

# 4. Strip what is not needed, compile, zip.
"$PY" - "$STAGE/app" <<'EOF'
import os, py_compile, shutil, sys
root = sys.argv[1]
drop_dirs = {"__pycache__", "tests", "test", "testing", "_upb"}
for folder, dirs, files in os.walk(root):
    for d in [d for d in dirs if d in drop_dirs]:
        shutil.rmtree(os.path.join(folder, d))
        dirs.remove(d)
    for f in files:
        path = os.path.join(folder, f)
        if f.endswith((".so", ".pyd", ".dylib", ".dll")):
            sys.exit(f"build-zipapp: compiled file in the vendored tree: {os.path.relpath(path, root)}")
        if f.endswith((".pyi", ".pyc")) or f == "RECORD":
            os.remove(path)
        elif f.endswith(".py"):
            # legacy layout (module.pyc beside module.py) is what zipimport reads; no mtime check
            py_compile.compile(path, cfile=path + "c", dfile=os.path.relpath(path, root), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
EOF

"$PY" -m zipapp "$STAGE/app" -o "$OUT" -p "/usr/bin/env python3" -c
bytes=$(stat -c %s "$OUT")
echo "build-zipapp: built $OUT: $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }')), .pyc for Python $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'), in $(( $(date +%s) - started )) s"
"$PY" "$OUT" --version | sed 's/^/build-zipapp:   /'
