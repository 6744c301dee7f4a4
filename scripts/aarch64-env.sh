#!/usr/bin/env bash
# Sets up an emulated aarch64 Python for the neon tests (scripts/aarch64-test.sh runs them):
#   - Debian's qemu-user-static and mmdebstrap (apt-get, as root);
#   - an arm64 Debian rootfs holding python3, libgomp1 (numba's OpenMP layer) and libstdc++6 (numpy,
#     llvmlite), its packages only extracted (mmdebstrap's extract variant runs no arm64 program, so no
#     binfmt_misc is needed);
#   - PyPI's aarch64 wheels of corert's dependencies and test extra as pyproject.toml lists them, at the
#     versions of the x86 .venv when there is one, in the rootfs's dist-packages; all but
#     llama-cpp-python, which has no aarch64 wheel and is never imported on the native path.
# Idempotent: each step is skipped while its stamp (what it was made from) is unchanged.  Everything lives in
# $CORERT_AARCH64_CACHE (default ~/.cache/corert/aarch64), outside the repository, so a fresh clone on the
# same machine reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CORERT_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corert/aarch64}
ROOT=$CACHE/rootfs
SITE=$ROOT/usr/lib/python3/dist-packages  # a site dir of the rootfs's python3
SUITE=bookworm
DEBS=python3,libgomp1,libstdc++6
HOST_PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && HOST_PY=.venv/bin/python
say() { echo "aarch64-env: $*" >&2; }
start=$(date +%s)
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # two set-ups at once would extract over each other

# -- host tools ------------------------------------------------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null; then
  say "installing qemu-user-static and mmdebstrap (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends qemu-user-static mmdebstrap >/dev/null
fi

# -- arm64 rootfs ----------------------------------------------------------------------------------------------
# The host's own apt sources (the same mirror, updates and security suites), pasted into the rootfs.
SOURCES=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
  [ -s "$f" ] && grep -q "$SUITE" "$f" && SOURCES+=("$f")
done
[ ${#SOURCES[@]} -gt 0 ] || { say "no apt source for $SUITE in /etc/apt: cannot fetch arm64 packages"; exit 1; }
root_stamp="$SUITE $DEBS"
if [ "$(cat "$CACHE/rootfs.stamp" 2>/dev/null)" != "$root_stamp" ] || [ ! -x "$ROOT/usr/bin/python3" ]; then
  say "building the arm64 rootfs ($DEBS)"
  rm -rf "$ROOT" "$CACHE/rootfs.stamp" "$CACHE/wheels.stamp"
  mmdebstrap --quiet --variant=extract --arch=arm64 --include="$DEBS" "$SUITE" "$ROOT" "${SOURCES[@]}"
  echo "$root_stamp" >"$CACHE/rootfs.stamp"
fi
PY_VER=$(qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3" -c \
  'import sys; print("%d.%d" % sys.version_info[:2])')

# -- aarch64 wheels --------------------------------------------------------------------------------------------
# Pinned to the x86 venv's versions, so both sides of the x86/aarch64 comparison run the same numba and numpy.
specs=$("$HOST_PY" - <<'EOF'
import re
import tomllib
from importlib import metadata

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["test"] + ["llvmlite"]  # numba's, pinned too
for spec in wanted:
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
    if name.lower() == "llama-cpp-python":
        continue
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(spec.split(";")[0].replace(" ", ""))
EOF
)
wheel_stamp="$PY_VER $(echo $specs)"
if [ "$(cat "$CACHE/wheels.stamp" 2>/dev/null)" != "$wheel_stamp" ]; then
  say "installing aarch64 wheels for Python $PY_VER: $(echo $specs)"
  rm -rf "$SITE.new"
  # shellcheck disable=SC2086
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$HOST_PY" -m pip install -q --no-warn-conflicts --root-user-action=ignore --target "$SITE.new" \
    --only-binary=:all: --implementation cp --python-version "$PY_VER" --abi "cp${PY_VER/./}" \
    --platform manylinux_2_36_aarch64 --platform manylinux_2_34_aarch64 --platform manylinux_2_31_aarch64 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
    --platform linux_aarch64 $specs
  rm -rf "$SITE" && mv "$SITE.new" "$SITE"
  echo "$wheel_stamp" >"$CACHE/wheels.stamp"
fi

# -- check -----------------------------------------------------------------------------------------------------
qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3" -s -c \
  'import platform, numba, numpy; assert platform.machine() == "aarch64", platform.machine()' \
  || { say "the emulated python cannot import numba/numpy: remove $CACHE and run again"; exit 1; }
say "ready in $(( $(date +%s) - start )) s: $CACHE (run scripts/aarch64-test.sh)"
