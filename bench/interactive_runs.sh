# shellcheck shell=bash
# Sourced by bench/gpu_s2_call*.sh: run_i NAME LIMIT [KEY=VALUE ...] runs the suite's own
# interactive path (interactive_benchmarking.sh) with those settings in the environment, keeps
# its output in $OUT/raw/interactive_NAME.log, prints the last progress lines, returns its rc.
run_i() {
  local name=$1 limit=$2; shift 2
  echo "== interactive $name: $*"
  env "$@" timeout "$limit" bash interactive_benchmarking.sh > "$OUT/raw/interactive_$name.log" 2>&1
  local rc=$?
  echo "rc=$rc"; grep -E "throughput per GPU|Error|error" "$OUT/raw/interactive_$name.log" | grep -v -i warn | tail -2 | cut -c1-400
  return $rc
}
