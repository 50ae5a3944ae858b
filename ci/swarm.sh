#!/usr/bin/env bash
# A bounded swarm over fresh seeds of the scenarios with random faults
# (`[random_faults]`), in a release build. Prints the replay command of
# every failing run and exits non-zero if there was one.
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${SWARM_BUDGET:-3m}"
first_seed="${SWARM_FIRST_SEED:-$(( $(date +%s) % 1000000000 ))}"
read -r -a scenarios <<< "${SWARM_SCENARIOS:-scenarios/random-faults.toml scenarios/random-faults-wide.toml scenarios/stats-signals-random.toml}"
echo "swarm: ${scenarios[*]}; seeds from ${first_seed}; budget ${budget}"
cargo build --quiet --release -p elide-sim --bin elide-sim
target/release/elide-sim swarm --budget "$budget" --seeds 1000000 \
    --first-seed "$first_seed" "${scenarios[@]}"
