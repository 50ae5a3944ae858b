#!/usr/bin/env bash
# Runs every example job through elide-run (real plugin, private daemon,
# real python3/node) and checks its output and exit code. Exits non-zero
# on the first mismatch. Usage: bash ci/examples.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p elide-runner --bin elide-run -p elide-driver --bin nomad-driver-elide \
  -p elide-daemon --bin elide-daemon
target="${CARGO_TARGET_DIR:-target}/debug"
run="$target/elide-run"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failures=0
# expect JOB CODE PATTERN...: runs JOB, checks the exit code and that
# stdout contains every PATTERN (fixed strings).
# Set agent=FILE to run with --agent-config FILE.
agent=""
expect() {
  local job=$1 code=$2; shift 2
  local got=0
  local flags=()
  [ -n "$agent" ] && flags=(--agent-config "$agent")
  timeout 120 "$run" "${flags[@]}" "examples/$job" >"$work/out" 2>"$work/err" || got=$?
  local ok=1
  [ "$got" -eq "$code" ] || { echo "FAIL $job: exit code $got, expected $code"; ok=0; }
  for pattern in "$@"; do
    grep -qF -- "$pattern" "$work/out" || { echo "FAIL $job: no line with: $pattern"; ok=0; }
  done
  if [ $ok -eq 1 ]; then
    echo "ok   $job (exit $got)"
  else
    failures=$((failures + 1))
    echo "--- stdout"; cat "$work/out"; echo "--- stderr"; cat "$work/err"
  fi
}

expect hello-python.nomad 0 "[hello] hello from python 3." "[hello] task hello of job hello-python"
expect hello-javascript.nomad 0 "[hello] hello from javascript v" "[hello] alloc hello-javascript.hello[0], memory limit 96 MB"
expect hello-typescript.nomad 0 "[hello] hello from typescript on node " "[hello] task hello is calm"
expect env-and-args.nomad 0 "[show] GREETING=hello" "[show] TARGET=nomad" "[show] args=['first', 'second arg', 'show']"
expect exit-code.nomad 3 "[fail] about to exit with 3"
expect group-polyglot.nomad 0 "[py] python sees alloc" "[js] javascript sees alloc"

# The original Elide driver's README, as written: plugin "elide" with the
# intrinsics io and env. Its polyglot and AI examples need the Elide
# runtime and are refused at StartTask (exit 1, nothing runs).
agent=examples/original/nomad-agent.hcl
expect original/hello-python.nomad 0 "[hello] Hello from Elide on Nomad!" "[hello] This is a polyglot runtime"
expect original/polyglot.nomad 1
grep -qF "only the Elide runtime provides" "$work/err" || { echo "FAIL original/polyglot.nomad: no refusal"; failures=$((failures + 1)); }
expect original/ai-inference.nomad 1
grep -qF '"elide:llm" (line 6)' "$work/err" || { echo "FAIL original/ai-inference.nomad: no refusal"; failures=$((failures + 1)); }
agent=""

# The service: wait for "ready", Ctrl-C (SIGINT) elide-run, expect the
# task's SIGTERM goodbye and exit code 0.
"$run" examples/service-sigterm.nomad >"$work/svc.out" 2>"$work/svc.err" &
pid=$!
for _ in $(seq 300); do grep -q "ready: serving" "$work/svc.out" && break; sleep 0.1; done
kill -INT "$pid"
code=0
wait "$pid" || code=$?
if [ "$code" -eq 0 ] && grep -qF "[server] goodbye: got SIGTERM" "$work/svc.out"; then
  echo "ok   service-sigterm.nomad (stopped by SIGINT, exit 0)"
else
  failures=$((failures + 1))
  echo "FAIL service-sigterm.nomad: exit $code"; cat "$work/svc.out" "$work/svc.err"
fi

if [ "$failures" -ne 0 ]; then
  echo "examples: $failures failed"
  exit 1
fi
echo "examples: all ok"
