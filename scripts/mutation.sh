#!/usr/bin/env bash
# Mutation score of the modules that hold logic (issue 21), with mutmut 3: a command you run, not part of CI.
#
#   scripts/mutation.sh                 every module below, in order
#   scripts/mutation.sh stops cancel    only those
#
# Each module is mutated alone and checked only by its own fast tests (no model load where the module
# needs none), so one module takes minutes on 2 cores.  Kernels are left out: their tests compare against
# references already.
#
# mutmut imports the mutated code from a copy of the package, found on sys.path by its import name.  Our
# folders are not named after the package (core/ is `corert`, plugins/ is `corert.plugins`, see setup.py),
# so each run gets a staging folder, build/mutation/<module>/, laid out as installed:
#   corert/ (= core/), corert/plugins/ (= plugins/), tests/, and a pyproject.toml holding the run's settings.
# The results stay there: `cd build/mutation/<module> && ../../../.venv/bin/mutmut results` lists the
# survivors, `mutmut show <name>` shows one.  Scores are printed as a table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
NICE=${MUTATION_NICE:-15}
CHILDREN=${MUTATION_CHILDREN:-2}

# module key | file inside the package | its fast tests: the body of a TOML list of pytest arguments
#   [| mutant names (globs) to run, when only some functions of the file are the module's logic]
MODULES=(
  'plugin_host|corert/plugin_host.py|"tests/test_mutants_plugin_host.py", "tests/test_host_plugins.py", "tests/test_scheduler_budget.py", "-k", "not (test_selection_from_python or test_third_party_entry_point_overrides or test_broken_plugins_are_isolated or test_kv_cache_plugin_is_what or test_decoder_plugin_drives or test_scheduler_plugin_runs or test_engine_plugin_replaces or test_request_hooks_see or test_plugins_shows_paged_kv)"'
  'stops|corert/stops.py|"tests/test_mutants_stops.py"'
  'cancel|corert/cancel.py|"tests/test_mutants_cancel.py", "tests/test_scheduler_work_stealing.py"'
  'paged_blocks|corert/plugins/kv_cache/paged/blocks.py|"tests/test_mutants_paged_blocks.py"'
  # the queue: submit, placement, taking and stealing, withdrawal, the worker loop (timeouts, settling, stats
  # and shutdown are left out)
  'scheduler_queue|corert/plugins/scheduler/work_stealing.py|"tests/test_scheduler_work_stealing.py", "tests/test_mutants_scheduler_queue.py"|*ǁ_Workerǁload* *ǁsubmit* *ǁ_home_for* *ǁ_take* *ǁ_withdraw* *ǁ_work_* *ǁTaskFutureǁcancel*'
  # the pure tests of each (the end-to-end ones load a model per mutant and do not fit)
  'speculative_acceptance|corert/plugins/speculative/acceptance.py|"tests/test_speculative.py", "tests/test_mutants_speculative.py", "-k", "test_greedy_ or test_sampled_acceptance_ or test_rejection_ or test_a_draft_token"'
  'speculative_controller|corert/plugins/speculative/controller.py|"tests/test_speculative.py", "tests/test_mutants_speculative.py", "-k", "test_controller_ or test_verify_cost_ or test_shadow_offers_ or test_match_ or test_record_ or test_a_ or test_chooser_ or test_ema_ or test_depths_ or test_defaults_ or test_acceptance_rate"'
  'models_store|corert/models/store.py|"tests/test_mutants_models_store.py"'
  # the generation loop of one request: SmolLM2 loaded once, in mutmut's process; every forked run inherits it
  'generation|corert/generation.py|"tests/test_mutants_generation.py"'
)

if ! "$PY" -c "import mutmut" 2>/dev/null; then
  "$PY" -m pip install -q -e ".[test,pull,dev]"
fi

wanted=("$@")
want() {
  [ ${#wanted[@]} -eq 0 ] && return 0
  local w
  for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

stage() {  # $1 key, $2 file, $3 tests -> prints the staging folder
  local dir=$ROOT/build/mutation/$1
  rm -rf "$dir" && mkdir -p "$dir"
  cp -r core "$dir/corert" && cp -r plugins "$dir/corert/plugins" && cp -r tests "$dir/tests"
  find "$dir" -name __pycache__ -prune -exec rm -rf {} +
  cat > "$dir/pyproject.toml" <<EOF
[tool.mutmut]
source_paths = ["corert"]
only_mutate = ["$2"]
pytest_add_cli_args_test_selection = [$3]
pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-m", "not slow"]

[tool.pytest.ini_options]
markers = ["slow: long-running tests"]
EOF
  echo "$dir"
}

summary=()
for spec in "${MODULES[@]}"; do
  IFS='|' read -r key file tests only <<<"$spec"
  want "$key" || continue
  dir=$(stage "$key" "$file" "$tests")
  echo "== mutation: $key ($file) against: $tests" >&2
  start=$(date +%s)
  (set -f; cd "$dir" && nice -n "$NICE" "$ROOT/.venv/bin/mutmut" run --max-children "$CHILDREN" $only >"$dir/run.log" 2>&1) || {
    echo "mutmut failed for $key; see $dir/run.log" >&2; tail -20 "$dir/run.log" >&2; continue; }
  took=$(( $(date +%s) - start ))
  line=$(set -f; "$PY" - "$dir/mutants/$file.meta" "$key" "$took" $only <<'EOF'
import fnmatch, json, sys
from collections import Counter
meta, key, took, globs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
codes = json.load(open(meta))["exit_code_by_key"]
codes = {k: c for k, c in codes.items() if not globs or any(fnmatch.fnmatch(k, g) for g in globs)}
# mutmut's exit codes: 1, 3 killed; 0 survived; 5, 33 no tests; 36, 24, -24, 152, 255 timeout; None not run
kind = Counter("killed" if c in (1, 3) else "survived" if c == 0 else "no tests" if c in (5, 33)
               else "timeout" if c in (36, 24, -24, 152, 255) else "not run" if c is None else "suspicious"
               for c in codes.values())
print(f"| {key} | {kind['killed']}/{len(codes)} | {kind['survived']} | {kind['timeout']} | {kind['suspicious']} "
      f"| {kind['no tests']} | {took // 60} min {took % 60} s |")
EOF
)
  summary+=("$line")
  echo "$line" >&2
done

echo "| module | killed/total | survived | timeout | suspicious | no tests | time |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for line in "${summary[@]}"; do echo "$line"; done
