#!/usr/bin/env bash
# Creates .venv at the repository root and installs corert with everything it needs, tests included.
# llama-cpp-python has no wheel on the package index: the first install builds it from source (~5 min on
# 2 cores); pip's wheel cache keeps the build, so later set-ups reuse it instead of rebuilding.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
  echo "corert setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "corert setup: installing dependencies (llama-cpp-python builds from source the first time: ~5 min)" >&2
fi
.venv/bin/python -m pip install -q -e ".[test,pull]"
echo "corert setup: ready (.venv/bin/corert)" >&2
