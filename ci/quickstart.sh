#!/usr/bin/env bash
# Quick start: builds the plugin, the daemon and elide-run, then runs the
# example job examples/hello-python.nomad end to end. elide-run launches the
# real nomad-driver-elide through Nomad's plugin handshake, starts a private
# elide-daemon, and the snippet runs in python3. Exits with the job's exit code.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p elide-runner --bin elide-run -p elide-driver --bin nomad-driver-elide \
  -p elide-daemon --bins
target="${CARGO_TARGET_DIR:-target}/debug"
"$target/elide-run" examples/hello-python.nomad
