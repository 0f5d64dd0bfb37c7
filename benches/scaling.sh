#!/usr/bin/env bash
# Scaling from 1 to 16 workers on one many-core machine, in one run:
#   - W1 (dense synthetic logistic, 4M × 32): a bare scan-and-decode, a
#     streamed allreduce epoch (cache = false), a cached allreduce epoch at
#     batch 4096 and at batch 65536 (benches/dense.rs: `scan`, `train`);
#   - nycflights13 hashed into 2^22 slots: an allreduce epoch
#     (pipelines/nycflights.toml) and `tidemill stream` (benches/stream_nyc.toml),
#     and both again at 2^18 slots, to tell the model's size from the rows' work;
#   - W1 through `tidemill stream` (benches/stream_w1.toml);
#   - beside them, pyarrow reading W1 and scikit-learn's LogisticRegression
#     (lbfgs) fitting it, each limited to the same number of threads;
#   - W1 cached allreduce as threads against 2 processes over loopback.
# Workers and repetitions are interleaved (rep 1 of every worker count, then
# rep 2, ...) so that drift on a shared machine spreads over all of them.
# Writes OUT_DIR/runs.jsonl (every run) and OUT_DIR/summary.md (medians,
# speed-up and parallel efficiency against 1 worker).
#
# Usage: bash benches/scaling.sh [OUT_DIR]     (default benches/results/scaling-DATE)
# Env:
#   WORKERS   worker counts (default "1 2 4 8 16")
#   REPS      repetitions (default 3)
#   BENCH_DATA  W1's directory (default /tmp/bench; generated there if missing)
#   PY        python3 with numpy, pyarrow, scikit-learn, threadpoolctl
#             (default .bench-venv/bin/python if present, else python3)
#   BIN, DENSE  the tidemill binary and the dense bench binary (default: built
#             with cargo into target/release)
#   UNITS_PER_STEP  data.units_per_step of the W1 runs (default 4, the
#             pipeline default: at most that many workers read rows in a step)
#   SPIN      the idle spin (µs) of the *-spin runs (default 200; timely's is 10)
#   ONLY      run only these names (default: all but SKIP), e.g.
#             "scan w1-streamed w1-cached w1-cached-spin procs"
#   SKIP      names to leave out, e.g. "peers procs"
#   LAYOUTS   the "procs" section's layouts, NAME:WORKERS:PROCESSES:SPIN_US
#             (default "t2:2:1:10 p2:1:2:10 t16:16:1:10 p2x8:8:2:10")
# About 4 minutes on 16 cores with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benches/results/scaling-$(date +%Y%m%d-%H%M)}
WORKERS=${WORKERS:-1 2 4 8 16}
REPS=${REPS:-3}
BENCH_DATA=${BENCH_DATA:-/tmp/bench}
SKIP=${SKIP:-}
ONLY=${ONLY:-}
export UNITS_PER_STEP=${UNITS_PER_STEP:-4}
SPIN=${SPIN:-200}
# Only the *-spin runs and the layouts set the idle spin.
unset TIDEMILL_IDLE_SPIN_US
if [ -z "${PY:-}" ]; then
  if [ -x .bench-venv/bin/python ]; then PY=$PWD/.bench-venv/bin/python; else PY=python3; fi
fi
if [ -z "${BIN:-}" ] || [ -z "${DENSE:-}" ]; then
  cargo build --release --bins --benches --quiet
  BIN=${BIN:-$PWD/target/release/tidemill}
  DENSE=${DENSE:-$(ls -t target/release/deps/dense-* | grep -v '\.d$' | head -1)}
fi
mkdir -p "$OUT" "$BENCH_DATA"
if [ ! -f "$BENCH_DATA/dense_train.parquet" ] || [ ! -f "$BENCH_DATA/dense_test.parquet" ]; then
  "$PY" benches/peers/gen_dense.py "$BENCH_DATA"
fi
W=$(mktemp -d /tmp/scaling-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
RUNS=$OUT/runs.jsonl
: > "$RUNS"
T() { "$PY" benches/scaling_tools.py "$@"; }
run() { T run "$RUNS" "$W" "$@" || true; }   # NAME WORKERS REP CMD [METRICS]; a failed run is recorded, the report counts it
want() { if [ -n "$ONLY" ]; then [[ " $ONLY " == *" $1 "* ]]; else [[ " $SKIP " != *" $1 "* ]]; fi; }

T meta "$RUNS" date "\"$(date -u +%FT%TZ)\""
T meta "$RUNS" commit "\"${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo +dirty)}\""
T meta "$RUNS" reps "$REPS"
T meta "$RUNS" units_per_step "$UNITS_PER_STEP"
T meta "$RUNS" spin_us "$SPIN"
T meta "$RUNS" ncpu "$(nproc)"
T meta "$RUNS" cpu "$("$PY" -c 'import json; print(json.dumps(next((l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)))')"
T meta "$RUNS" mem_gib "$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)"
T meta "$RUNS" versions "$("$PY" -c 'import json; from importlib.metadata import version as v; print(json.dumps({p: v(p) for p in ("numpy", "pyarrow", "scikit-learn", "threadpoolctl")}))')"

# W1 for the CLI runs (threads against processes): cached, 3 epochs, no validation.
cat > "$W/w1.toml" <<EOF
[data]
train = "$BENCH_DATA/dense_train.parquet"
label = "label"
partition = "slice"
cache = true
units_per_step = $UNITS_PER_STEP
[model]
kind = "logistic"
l2 = 0.000001
[optimizer]
kind = "sgd"
learning_rate = 0.5
batch_size = 4096
schedule = "inverse_sqrt"
decay = 0.01
[train]
epochs = 3
EOF
FINAL="--set stream.snapshot_every=1000000 --set stream.snapshot_seconds=1000000"
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for rep in $(seq "$REPS"); do
  for w in $WORKERS; do
    echo "== rep $rep, $w workers" >&2
    want scan && run scan "$w" "$rep" "$DENSE scan $BENCH_DATA $w"
    want w1-streamed && run w1-streamed "$w" "$rep" "$DENSE train $BENCH_DATA $w false 3 4096"
    want w1-cached && run w1-cached "$w" "$rep" "$DENSE train $BENCH_DATA $w true 3 4096"
    want w1-cached-b64k && run w1-cached-b64k "$w" "$rep" "$DENSE train $BENCH_DATA $w true 3 65536"
    want nyc22-allreduce && run nyc22-allreduce "$w" "$rep" "$BIN train pipelines/nycflights.toml --set data.hash_bits=22 -w $w --model-out $W/nyc22.json --metrics-out $W/nyc22.jsonl --log warn" "$W/nyc22.jsonl"
    want nyc18-allreduce && run nyc18-allreduce "$w" "$rep" "$BIN train pipelines/nycflights.toml -w $w --model-out $W/nyc18.json --metrics-out $W/nyc18.jsonl --log warn" "$W/nyc18.jsonl"
    want stream-nyc && run stream-nyc "$w" "$rep" "$BIN stream benches/stream_nyc.toml --input datasets/nycflights13.parquet -w $w --model-out $W/snyc.json $FINAL --log warn"
    want stream-nyc18 && run stream-nyc18 "$w" "$rep" "$BIN stream benches/stream_nyc.toml --input datasets/nycflights13.parquet --set data.hash_bits=18 -w $w --model-out $W/snyc18.json $FINAL --log warn"
    want stream-w1 && run stream-w1 "$w" "$rep" "$BIN stream benches/stream_w1.toml --input $BENCH_DATA/dense_train.parquet -w $w --model-out $W/sw1.json $FINAL --log warn"
    want peers && run peers "$w" "$rep" "$PY benches/scaling_tools.py peers $BENCH_DATA $w"
    # The same cached epoch with workers that poll longer before parking.
    if want w1-cached-spin && [ "$w" -gt 1 ]; then
      run w1-cached-spin "$w" "$rep" "TIDEMILL_IDLE_SPIN_US=$SPIN $DENSE train $BENCH_DATA $w true 3 4096"
    fi
  done
  if want procs; then
    for lay in ${LAYOUTS:-t2:2:1:10 p2:1:2:10 t16:16:1:10 p2x8:8:2:10}; do
      IFS=: read -r name per procs spin <<< "$lay"
      echo "== rep $rep, $name" >&2
      export TIDEMILL_IDLE_SPIN_US=$spin
      if [ "$procs" = 1 ]; then
        run "w1-cli-$name" "$per" "$rep" "$BIN train $W/w1.toml -w $per --model-out $W/cli.json --metrics-out $W/cli.jsonl --log warn" "$W/cli.jsonl"
      else
        hosts=$W/hosts; : > "$hosts"
        for _ in $(seq "$procs"); do echo "127.0.0.1:$(port)" >> "$hosts"; done
        # Every process's exit status counts, not only process 0's.
        cmd="pids=(); for p in \$(seq 1 $((procs - 1))); do $BIN train $W/w1.toml -w $per -n $procs -p \$p --hostfile $hosts --model-out $W/cli-\$p.json --log warn > /dev/null & pids+=(\$!); done;"
        cmd+=" $BIN train $W/w1.toml -w $per -n $procs -p 0 --hostfile $hosts --model-out $W/cli.json --metrics-out $W/cli.jsonl --log warn; rc=\$?;"
        cmd+=" for q in \"\${pids[@]}\"; do wait \$q || rc=1; done; exit \$rc"
        run "w1-cli-$name" "$((per * procs))" "$rep" "$cmd" "$W/cli.jsonl"
      fi
      unset TIDEMILL_IDLE_SPIN_US
    done
  fi
done
T report "$RUNS" "$OUT/summary.md"
echo "results: $OUT" >&2
