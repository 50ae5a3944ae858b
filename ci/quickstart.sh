#!/usr/bin/env bash
# Quick start: builds the daemon and its client, starts a daemon on a private
# socket, runs a real Python and a real JavaScript snippet through it, and
# stops the daemon again. Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p elide-daemon --bins
bin=target/debug
work=$(mktemp -d)
socket="$work/daemon.sock"

"$bin/elide-daemon" --socket "$socket" --state-dir "$work/state" 2>"$work/daemon.log" &
daemon=$!
cleanup() {
  kill -TERM "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.05; done

ctl() { "$bin/elide-ctl" --socket "$socket" "$@"; }
ctl health
ctl run --language python --code 'import sys, platform; print("hello from python", platform.python_version(), sys.argv[1:])' --arg nomad
ctl run --language javascript --code 'console.log("hello from javascript", process.version)'
set +e
ctl run --language python --code 'import sys; print("exiting with 3", file=sys.stderr); sys.exit(3)'
code=$?
set -e
[ "$code" -eq 3 ] || { echo "expected exit code 3, got $code" >&2; exit 1; }
echo "quick start: ok (the last snippet's exit code 3 came back as elide-ctl's exit code)"
