#!/usr/bin/env bash
# Builds llama.cpp's llama-server for `corert bench serve --llama-server PATH`: optional, not part of set-up.
#
# The sources are the llama.cpp tree vendored in the llama-cpp-python sdist that corert pins, configured
# the portable way scripts/setup.sh builds llama-cpp-python (no -march=native; ggml's CPU backend as one
# module per x86-64 or Arm level, picked at load time).  Only the server's own code is compiled (the common
# library, mtmd, the HTTP server): libllama, libggml and the CPU backend modules are the ones set-up built
# from the same sources with the same flags, copied from the installed llama-cpp-python.  So llama-server
# runs the very C library corert's llama.cpp engine runs (the comparison the benchmark is for), and the
# build takes minutes instead of compiling every CPU level a second time.  No curl, no OpenSSL, no web UI
# download (the machine may be offline).
#
# The result is kept in a cache directory keyed by the version, the flags, the architecture and the
# libraries it links; a second run only prints the path.  Prints the binary's path on stdout (everything
# else goes to stderr).  Needs scripts/setup.sh's .venv (or PYTHON with llama-cpp-python installed).
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
# the server's targets in link order; libllama, libggml and the CPU modules come from llama-cpp-python
TARGETS="vendor/cpp-httplib/CMakeFiles/cpp-httplib.dir common/CMakeFiles/llama-common-base.dir
common/CMakeFiles/llama-common.dir tools/ui/CMakeFiles/llama-ui-assets.dir tools/ui/CMakeFiles/llama-ui.dir
vendor/hash/CMakeFiles/vendor-hash.dir tools/mtmd/CMakeFiles/mtmd.dir tools/server/CMakeFiles/server-context.dir
tools/server/CMakeFiles/llama-server-impl.dir tools/server/CMakeFiles/llama-server.dir"

lib=$("$PYTHON" - "$LLAMA_VERSION" <<'EOF'
import pathlib, sys
import llama_cpp
if llama_cpp.__version__ != sys.argv[1]:
    sys.exit(f"build-llama-server: llama-cpp-python {llama_cpp.__version__} is installed, {sys.argv[1]} is needed "
             "(run scripts/setup.sh)")
print(pathlib.Path(llama_cpp.__file__).parent / "lib")
EOF
)
if ! ls "$lib"/libggml-cpu-*.so >/dev/null 2>&1; then
  echo "build-llama-server: $lib has no ggml CPU backend modules: install llama-cpp-python with scripts/setup.sh" >&2
  exit 1
fi
libs_sum=$(cat "$lib"/libllama.so.* "$lib"/libggml*.so* | sha256sum | cut -c1-16)
key=$(printf '%s|%s|%s|%s' "$LLAMA_VERSION" "$CMAKE_FLAGS" "$(uname -m)" "$libs_sum" | sha256sum | cut -c1-16)
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
# $ORIGIN: the binary finds its shared libraries (and ggml its CPU modules) beside it
# shellcheck disable=SC2086  # the flags are words
cmake -S "$src" -B "$work/build" $CMAKE_FLAGS -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' \
  >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; exit 1; }
# the link lines name libllama and libggml by their paths in the build tree: put set-up's copies there
mkdir -p "$work/build/bin"
cp "$lib"/*.so* "$work/build/bin/"
echo "build-llama-server: compiling the server (common, mtmd, HTTP; several minutes)" >&2
(
  cd "$work/build"
  for t in $TARGETS; do  # each target's own makefile: its objects, never its dependencies (libllama, ggml)
    make -j "$(nproc)" -f "$t/build.make" "$t/build"
  done
) >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }

rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin"
cp "$work/build/bin/llama-server" "$out.tmp/bin/"
find "$work/build/bin" -maxdepth 1 -name '*.so*' -exec cp {} "$out.tmp/bin/" \;
"$out.tmp/bin/llama-server" --version >/dev/null 2>&1 || { echo "build-llama-server: the binary does not run" >&2; exit 1; }
rm -rf "$out" && mv "$out.tmp" "$out"
echo "build-llama-server: built in $(( $(date +%s) - start )) s" >&2
echo "$out/bin/llama-server"
