#!/usr/bin/env bash
# Coverage as a map (issue 21): which public functions of core/ and plugins/ no test runs.  Not part of CI.
#
#   scripts/coverage-map.sh                        the whole suite under coverage, then the map
#   scripts/coverage-map.sh run tests/test_a.py …  some test files (any pytest arguments), appended to the data:
#                                                  on a shared 2-core machine the suite is run in chunks
#   scripts/coverage-map.sh map                    the report of the data gathered so far -> docs/coverage.md
#   scripts/coverage-map.sh clean                  forget the data
#
# The data and the reports stay in build/coverage/ (coverage.json, html/).  Subprocesses (the CLI tests'
# `corert`, bench sides, isolation workers) are measured too: scripts/coverage.rc's `patch = subprocess`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
OUT=$ROOT/build/coverage
# Absolute, and in the environment, so subprocesses started in other folders write beside the tests' data.
export COVERAGE_FILE=$OUT/.coverage COVERAGE_RCFILE=$ROOT/scripts/coverage.rc
mkdir -p "$OUT"

if ! "$PY" -c "import pytest_cov, coverage, sys; sys.exit(coverage.version_info < (7, 10))" 2>/dev/null; then
  "$PY" -m pip install -q -e ".[test,pull,dev]"
fi

run() {
  "$PY" -m pytest -q -p no:cacheprovider --cov=corert --cov-config="$COVERAGE_RCFILE" --cov-append \
    --cov-report= "$@" || echo "coverage-map: pytest failed (exit $?); its coverage is kept" >&2
}

report() {
  "$PY" -m coverage combine --append -q 2>/dev/null || true
  "$PY" -m coverage json -q -o "$OUT/coverage.json"
  "$PY" -m coverage html -q -d "$OUT/html"
  "$PY" -m coverage report --format=total | sed 's/^/coverage-map: total % /' >&2
  "$PY" scripts/coverage_map.py "$OUT/coverage.json" docs/coverage.md --command "${MAP_COMMAND:-scripts/coverage-map.sh}" \
    --note "${MAP_NOTE:-}"
}

case "${1:-all}" in
  run) shift; run "$@" ;;
  map) report ;;
  clean) rm -rf "$OUT" ;;
  all) rm -rf "$OUT" && mkdir -p "$OUT"; run tests; report ;;
  *) echo "coverage-map: unknown command '$1' (run, map, clean, or nothing for all)" >&2; exit 2 ;;
esac
