#!/usr/bin/env bash
# Creates .venv at the repository root and installs corert with everything it needs, tests included.
#
# llama-cpp-python has no wheel on the package index, so it is built here from its sdist, portably: no
# -march=native, ggml's CPU backend as one module per x86-64 level (or Arm level) that ggml picks at load
# time from the CPU it runs on (see core/llama_lib.py).  One build is correct on any CPU of the
# architecture and uses AVX-512/VNNI where the CPU has them.
#
# The built wheel is kept in our own cache, keyed by the version, the build flags and the architecture.
# pip's wheel cache is keyed by the sdist alone, so a build tuned to one CPU would be handed to the next
# machine; ours never is.  Cold: ~15-20 min on 2 cores (every CPU level compiled); warm: ~1 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF -DCMAKE_INSTALL_BINDIR=llama_cpp/lib"

if [ ! -x .venv/bin/python ]; then
  echo "corert setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi

key=$(printf '%s|%s|%s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-16)
cache_root=${CORERT_WHEEL_CACHE:-$(.venv/bin/python -m pip cache dir 2>/dev/null || echo "${XDG_CACHE_HOME:-$HOME/.cache}/corert")/corert-wheels}
wheel_dir="$cache_root/llama-cpp-python-$LLAMA_VERSION-$key"
marker=.venv/corert-llama-build
if [ "$(cat "$marker" 2>/dev/null)" != "$key" ] || ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "corert setup: building llama-cpp-python $LLAMA_VERSION portably (every CPU level; ~15-20 min the first time)" >&2
    tmp="$wheel_dir.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    start=$(date +%s)
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
      -w "$tmp" "llama-cpp-python==$LLAMA_VERSION"
    rm -rf "$wheel_dir" && mv "$tmp" "$wheel_dir"
    echo "corert setup: llama-cpp-python built in $(( $(date +%s) - start )) s (kept in $wheel_dir)" >&2
  fi
  whl=$(ls "$wheel_dir"/llama_cpp_python-*.whl | head -n 1)
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "$whl"
  .venv/bin/python -m pip install -q "$whl"  # its own dependencies
  echo "$key" > "$marker"
fi
.venv/bin/python -m pip install -q -e ".[test,pull,plots,serve,bench,ray]"
echo "corert setup: ready (.venv/bin/corert)" >&2
