#!/usr/bin/env bash
# Builds llama.cpp's llama-server for `corert bench serve --llama-server PATH`: optional, not part of set-up.
#
# The sources are the llama.cpp tree vendored in the llama-cpp-python sdist that corert pins, so the server
# runs the same C library as corert's llama.cpp engine.  The build is portable like scripts/setup.sh's: no
# -march=native, ggml's CPU backend as one module per x86-64 (or Arm) level, picked at load time.  No curl,
# no OpenSSL, no web UI download (the machine may be offline).
#
# The result is kept in a cache directory keyed by the version, the flags and the architecture; a second
# run only prints the path.  Prints the binary's path on stdout (everything else goes to stderr).
# Cold: ~15-25 min on 2 cores (every CPU level is compiled).
#
#   scripts/build-llama-server.sh            # builds (or finds) it, prints .../bin/llama-server
#   corert bench serve --llama-server "$(scripts/build-llama-server.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
LLAMA_VERSION=0.3.36
CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF"

key=$(printf '%s|%s|%s' "$LLAMA_VERSION" "$CMAKE_FLAGS" "$(uname -m)" | sha256sum | cut -c1-16)
cache_root=${CORERT_LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corert/llama-server}
out="$cache_root/$LLAMA_VERSION-$key"
if [ -x "$out/bin/llama-server" ]; then
  echo "$out/bin/llama-server"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/corert-llama-server.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build-llama-server: fetching the llama-cpp-python $LLAMA_VERSION sdist" >&2
"$PYTHON" -m pip download -q --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$LLAMA_VERSION" >&2
tar xzf "$work"/llama_cpp_python-"$LLAMA_VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"

echo "build-llama-server: configuring ($src)" >&2
start=$(date +%s)
# shellcheck disable=SC2086  # the flags are words
# $ORIGIN: the binary finds its shared libraries beside it once copied out of the build tree
cmake -S "$src" -B "$work/build" $CMAKE_FLAGS -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' >"$work/cmake.log" 2>&1 \
  || { cat "$work/cmake.log" >&2; exit 1; }
# llama-server and the CPU backend modules it loads at run time (not link dependencies, so named here)
targets=$(cmake --build "$work/build" --target help | sed -n 's/^\.\.\. \(ggml-cpu[a-z0-9_-]*\).*/\1/p' | tr '\n' ' ')
echo "build-llama-server: building llama-server and $(echo "$targets" | wc -w) CPU backend modules (several minutes)" >&2
# shellcheck disable=SC2086
cmake --build "$work/build" -j "$(nproc)" --target llama-server $targets >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; exit 1; }

rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin"
cp "$work/build/bin/llama-server" "$out.tmp/bin/"
# the shared libraries and the CPU modules sit beside the binary: ggml looks for its modules there
find "$work/build/bin" -maxdepth 1 -name '*.so*' -exec cp -P {} "$out.tmp/bin/" \;
rm -rf "$out" && mv "$out.tmp" "$out"
echo "build-llama-server: built in $(( $(date +%s) - start )) s" >&2
echo "$out/bin/llama-server"
