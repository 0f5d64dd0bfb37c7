#!/usr/bin/env bash
# W1 (dense synthetic logistic, 4M × 32) side by side: scikit-learn SGD and
# L-BFGS, Vowpal Wabbit, and tidemill on 1 and 2 workers, in one run on one
# machine, appended to one results file; then the ratio table.
#   bash benches/peers/setup.sh                 # once: the peers' venv (.bench-venv)
#   python3 benches/peers/gen_dense.py /tmp/bench   # once: the data (or add "gen" below)
#   bash benches/w1_peers.sh                   # EPOCHS="5 1" WORKERS="1 2" REPS=3 by default
#   PEERS=w1-lbfgs EPOCHS=1 WORKERS=2 bash benches/w1_peers.sh   # the target lines alone (harness and CLI)
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_DATA=${BENCH_DATA:-/tmp/bench}
export BENCH_VENV=${BENCH_VENV:-$PWD/.bench-venv}
OUT=${BENCH_OUT:-$BENCH_DATA/results/w1-$(date +%Y%m%d-%H%M%S).jsonl}
export BENCH_OUT=$OUT
cargo build --release --benches --quiet
BENCH=$(ls -t target/release/deps/dense-* | grep -v '\.d$' | head -1)
# PEERS: which peers run (all three by default).
bash benches/peers/run_all.sh ${PEERS:-w1-sgd w1-lbfgs w1-vw} || true
# EPOCHS: tidemill's epoch counts (5, the fixed configuration; 1, where it
# first reaches the Bayes log loss to 0.01%); REPS runs each, median wall.
for e in ${EPOCHS:-5 1}; do
  for w in ${WORKERS:-1 2}; do
    "$BENCH" peer "$BENCH_DATA" "$w" "$e" | tee -a "$OUT"
  done
done
# The binary's whole job (reading, scan, training, validation, the model
# written), as a user runs it: CLI_EPOCHS (1) and CLI_WORKERS (2); CLI=0
# skips it.
if [ "${CLI:-1}" != 0 ]; then
  cargo build --release --quiet
  for e in ${CLI_EPOCHS:-1}; do
    for w in ${CLI_WORKERS:-2}; do
      "$BENCH_VENV/bin/python" benches/peers/cli_line.py target/release/tidemill "$BENCH_DATA" "$w" "$e" | tee -a "$OUT"
    done
  done
fi
"$BENCH_VENV/bin/python" benches/peers/table.py "$OUT"
echo "results: $OUT"
