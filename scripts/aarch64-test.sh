#!/usr/bin/env bash
# Runs tests/aarch64/ on an emulated aarch64 CPU: the rootfs's python3 under qemu-aarch64-static -L (no
# binfmt_misc needed), with this work tree's corert installed into a snapshot.  Arguments go to pytest.
#   scripts/aarch64-env.sh && scripts/aarch64-test.sh -q
#   scripts/aarch64-test.sh --check     exit 0 when the environment is set up, else say why on stderr
# The snapshot is keyed by the sources' content and reused while they are unchanged, together with the numba
# cache inside it: numba keys a cache entry by the source file's path and mtime and does not notice a changed
# callee in another file, so one fresh cache per source state is what keeps the cached code honest.
# QEMU_CPU picks the emulated CPU (default neoverse-n1: Armv8.2 with NEON and the int8 dot product, as in
# Graviton 2 or Ampere Altra).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CORERT_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corert/aarch64}
ROOT=$CACHE/rootfs
say() { echo "aarch64-test: $*" >&2; }

missing=""
command -v qemu-aarch64-static >/dev/null || missing="qemu-aarch64-static is not installed"
[ -n "$missing" ] || [ -x "$ROOT/usr/bin/python3" ] || missing="no arm64 rootfs in $CACHE"
[ -n "$missing" ] || [ -f "$CACHE/wheels.stamp" ] || missing="no aarch64 wheels in $CACHE"
if [ "${1:-}" = "--check" ]; then
  [ -z "$missing" ] || { echo "$missing" >&2; exit 1; }
  exit 0
fi
[ -z "$missing" ] || { say "$missing: run scripts/aarch64-env.sh first"; exit 3; }

# -- corert from this work tree, installed (not editable) into a snapshot keyed by its sources -------------------
cd "$REPO"
key=$( { git ls-files -co --exclude-standard -- core plugins setup.py pyproject.toml 2>/dev/null \
         || find core plugins setup.py pyproject.toml -type f; } \
       | grep -v -e '__pycache__' -e '\.pyc$' | sort | while read -r f; do [ -f "$f" ] && sha256sum "$f"; done \
       | sha256sum | cut -c1-16)
SNAP=$CACHE/corert/$key
mkdir -p "$CACHE/corert"
exec 9>"$CACHE/corert/.lock"
flock 9
if [ ! -f "$SNAP/ok" ]; then
  say "installing corert ($key) into $SNAP"
  rm -rf "$SNAP"
  HOST_PY=python3
  [ -x .venv/bin/python ] && HOST_PY=.venv/bin/python
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$HOST_PY" -m pip install -q --no-deps --no-warn-conflicts --root-user-action=ignore \
    --target "$SNAP/site" "$REPO" >/dev/null
  touch "$SNAP/ok"
  # keep the three newest snapshots (and their numba caches)
  ls -1dt "$CACHE"/corert/*/ | tail -n +4 | xargs -r rm -rf
fi
touch "$SNAP/ok"  # most recently used
flock -u 9

# -- run -------------------------------------------------------------------------------------------------------
export QEMU_CPU=${QEMU_CPU:-neoverse-n1}
export PYTHONPATH=$SNAP/site PYTHONNOUSERSITE=1
unset NUMBA_CACHE_DIR CORERT_CPU_FEATURES  # numba's cache beside the snapshot's sources; the CPU as detected
start=$(date +%s)
set +e
qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3" -m pytest -p no:cacheprovider tests/aarch64 "$@"
rc=$?
set -e
say "emulated run: $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
