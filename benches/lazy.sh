#!/usr/bin/env bash
# Lazy updates before and after (issue 7), in one run: main's binary against
# this tree's (eager and lazy), on one categorical of 100,000 and 1,000,000
# distinct values (hash_bits 20, batch 64, one epoch) and on a dense
# workload (32 numeric features), 2 worker threads. Prints the table with
# the ratios and writes it, with every run, to benches/results/lazy-time-*.
#   bash benches/lazy.sh [DATA_DIR] [BASE_BINARY]
# Without BASE_BINARY, main is built in a worktree of its own
# ($BASE_DIR, default /tmp/tidemill-bench-base) with its own target.
# WORKLOADS (dense,hc100k,hc1m), REPS (3), LIMIT (seconds per run, 300),
# WORKERS (2): see benches/lazy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/lazy}
BASE=${2:-}
if [ -z "$BASE" ]; then
  BASE_DIR=${BASE_DIR:-/tmp/tidemill-bench-base}
  if [ ! -d "$BASE_DIR" ]; then
    git worktree add --detach "$BASE_DIR" main
  fi
  (cd "$BASE_DIR" && cargo build --release --quiet --bin tidemill)
  BASE=$BASE_DIR/target/release/tidemill
fi
cargo build --release --quiet
if [ ! -f "$DATA/dense.parquet" ]; then
  cargo bench --quiet --bench lazy -- gen "$DATA"
fi
echo "before: $BASE ($("$BASE" --version))"
echo "after:  target/release/tidemill ($(target/release/tidemill --version)), $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
REPS=${REPS:-3} LIMIT=${LIMIT:-300} WORKERS=${WORKERS:-2} \
  cargo bench --quiet --bench lazy -- time "$DATA" "$BASE"
