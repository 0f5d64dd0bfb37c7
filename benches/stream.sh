#!/usr/bin/env bash
# `tidemill stream` measurements (docs/streaming.md), in one run on one machine:
#   1. nycflights13 replayed as fast as it goes on 1 and 2 workers against the
#      peers' stream workloads (peers.py nyc-vw-stream, nyc-river-stream):
#      rows/s and progressive log loss / AUC; 1b. the optimizer sweep that
#      chose benches/stream_nyc.toml's settings;
#   2. W1 dense (4M × 32) replayed on 1 and 2 workers against VW's one pass
#      (peers.py w1-vw-stream) and River's w1-river; 2b. the four strategies
#      on nycflights13, 1 and 2 workers;
#   3. peak RSS with a producer faster than training (cat of an Arrow IPC
#      stream into stdin) against a replay of the same rows, at 1× and 4×
#      the input length;
#   4. latency from a row's arrival to the snapshot that includes it, paced
#      at 50,000 rows/s, for a few batch_rows;
#   5. the cost of a snapshot (and of a checkpoint) per batch.
# Speeds are ratios of medians over REPS interleaved runs in this one run.
#
# Usage: bash benches/stream.sh [OUT_DIR]   (default benches/results/stream)
# Env: REPS (default 3), BENCH_DATA (W1's dense_train.parquet; default
# /tmp/bench, generated there if missing), BENCH_VENV (the peers' venv,
# default .bench-venv, made by benches/peers/setup.sh if missing).
# Writes OUT_DIR/summary.md and OUT_DIR/runs.jsonl (every run's record).
# About 8 minutes on 2 cores (VW's W1 runs take 2 of them; the checkpoint-every-batch runs of 5 and the
# --metrics-out runs of 5b take half of it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benches/results/stream}
REPS=${REPS:-3}
export BENCH_DATA=${BENCH_DATA:-/tmp/bench}
export BENCH_VENV=${BENCH_VENV:-$PWD/.bench-venv}
PY=$BENCH_VENV/bin/python
BIN=target/release/tidemill
NYC=datasets/nycflights13.parquet
started=$(date +%s)

if [ ! -x "$PY" ]; then
  bash benches/peers/setup.sh 2>&1 | tee /tmp/stream-bench-setup.log \
    || { echo "stream.sh: benches/peers/setup.sh failed (see /tmp/stream-bench-setup.log): the peers cannot run" >&2; exit 1; }
fi
mkdir -p "$BENCH_DATA"
if [ ! -f "$BENCH_DATA/dense_train.parquet" ]; then
  "$PY" benches/peers/gen_dense.py "$BENCH_DATA"
fi
cargo build --release --quiet
mkdir -p "$OUT"
W=$(mktemp -d /tmp/stream-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
RUNS=$W/runs.jsonl
T() { "$PY" benches/stream_tools.py "$@"; }
run() { T run "$RUNS" "$W" "$@"; }   # SECTION NAME REP CMD [EXTRA_JSON]

T meta "$RUNS" reps "$REPS"
T meta "$RUNS" date "\"$(date -u +%FT%TZ)\""
T meta "$RUNS" commit "\"$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo +dirty)\""
T meta "$RUNS" ncpu "$(nproc)"
T meta "$RUNS" cpu "$(python3 -c 'import json; print(json.dumps(next(l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))))')"
T meta "$RUNS" mem_gib "$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)"
for pkg in vowpalwabbit river pyarrow; do
  T meta "$RUNS" "$pkg" "\"$("$PY" -c "from importlib.metadata import version; print(version('$pkg'))")\""
done
if [ -f "$BENCH_DATA/dense_truth.json" ]; then
  T meta "$RUNS" w1_bayes "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("bayes_test_logloss", "null"))' "$BENCH_DATA/dense_truth.json")"
fi

STREAM="$BIN stream --log warn"
# Only the final snapshot (neither by count nor by time during the run).
FINAL="--set stream.snapshot_every=1000000 --set stream.snapshot_seconds=1000000"

echo "== inputs for sections 1, 3 and 4"
T prep "$W" "$BENCH_DATA"

echo "== 1. nycflights13 against VW and River ($REPS interleaved repetitions)"
for rep in $(seq "$REPS"); do
  run nyc tm-w1 "$rep" "$STREAM benches/stream_nyc.toml --input $NYC -w 1 --model-out $W/nyc.json $FINAL"
  run nyc vw "$rep" "$PY benches/peers/peers.py nyc-vw-stream --runs 1"
  run nyc tm-w2 "$rep" "$STREAM benches/stream_nyc.toml --input $NYC -w 2 --model-out $W/nyc.json $FINAL"
  run nyc river "$rep" "$PY benches/peers/peers.py nyc-river-stream --runs 1"
  run nyc tm-w1-snap "$rep" "$STREAM benches/stream_nyc.toml --input $NYC -w 1 --model-out $W/nyc.json --set stream.snapshot_every=1"
  run nyc tm-fixed "$rep" "$STREAM benches/stream_nyc.toml --input $W/nyc_4k.parquet -w 1 --model-out $W/nyc.json $FINAL"
  run nyc tm-w1-fast "$rep" "$STREAM benches/stream_nyc.toml --input $NYC -w 1 --model-out $W/nyc.json $FINAL --set optimizer.batch_size=256 --set optimizer.learning_rate=4"
done

echo "== 1b. optimizer sweep (one run each)"
# LABEL (kind,rate,rows a step) then the --set arguments.
while read -r label settings; do
  [ -n "$label" ] || continue
  run sweep "$label" 1 "$STREAM benches/stream_nyc.toml --input $NYC $FINAL $settings" "{\"settings\": \"$settings\"}"
done <<'SWEEP'
sgd,0.5,64 --set optimizer.kind=sgd --set optimizer.schedule=constant --set optimizer.learning_rate=0.5
sgd,1,64 --set optimizer.kind=sgd --set optimizer.schedule=constant --set optimizer.learning_rate=1
sgd,2,64 --set optimizer.kind=sgd --set optimizer.schedule=constant --set optimizer.learning_rate=2
sgd,5,64 --set optimizer.kind=sgd --set optimizer.schedule=constant --set optimizer.learning_rate=5
sgd,2,256 --set optimizer.kind=sgd --set optimizer.schedule=constant --set optimizer.learning_rate=2 --set optimizer.batch_size=256
sgd,4,256 --set optimizer.kind=sgd --set optimizer.schedule=constant --set optimizer.learning_rate=4 --set optimizer.batch_size=256
sgd-inverse_sqrt(decay=0.01),2,64 --set optimizer.kind=sgd --set optimizer.schedule=inverse_sqrt --set optimizer.decay=0.01 --set optimizer.learning_rate=2
ftrl,0.1,64 --set optimizer.kind=ftrl --set optimizer.schedule=constant --set optimizer.learning_rate=0.1
ftrl,1,64 --set optimizer.kind=ftrl --set optimizer.schedule=constant --set optimizer.learning_rate=1
ftrl,3,32 --set optimizer.kind=ftrl --set optimizer.schedule=constant --set optimizer.learning_rate=3 --set optimizer.batch_size=32
ftrl,5,64 --set optimizer.kind=ftrl --set optimizer.schedule=constant --set optimizer.learning_rate=5
ftrl,10,64 --set optimizer.kind=ftrl --set optimizer.schedule=constant --set optimizer.learning_rate=10
ftrl,5,256 --set optimizer.kind=ftrl --set optimizer.schedule=constant --set optimizer.learning_rate=5 --set optimizer.batch_size=256
adagrad,0.1,64 --set optimizer.kind=adagrad --set optimizer.schedule=constant --set optimizer.learning_rate=0.1
adagrad,0.5,64 --set optimizer.kind=adagrad --set optimizer.schedule=constant --set optimizer.learning_rate=0.5
adagrad,2,64 --set optimizer.kind=adagrad --set optimizer.schedule=constant --set optimizer.learning_rate=2
SWEEP

echo "== 2. W1 dense stream"
DENSE=$BENCH_DATA/dense_train.parquet
for rep in $(seq "$REPS"); do
  run w1 tm-w1 "$rep" "$STREAM benches/stream_w1.toml --input $DENSE -w 1 --model-out $W/w1.json $FINAL"
  run w1 tm-w2 "$rep" "$STREAM benches/stream_w1.toml --input $DENSE -w 2 --model-out $W/w1.json $FINAL"
  run w1 vw "$rep" "$PY benches/peers/peers.py w1-vw-stream --runs 1"
  run w1 river "$rep" "$PY benches/peers/peers.py w1-river --runs 1"
done

echo "== 2b. strategies on nycflights13"
for rep in $(seq "$REPS"); do
  for s in allreduce param-server-2 model-average model-parallel; do
    case $s in
      param-server-2) sets="--set train.strategy=\"param-server\" --set train.staleness=2" ;;
      *) sets="--set train.strategy=\"$s\"" ;;
    esac
    for w in 1 2; do
      run strategies "$s w$w" "$rep" "$STREAM benches/stream_nyc.toml --input $NYC -w $w --model-out $W/s.json $FINAL $sets"
    done
  done
done

echo "== 3. peak RSS: a fast producer on stdin against a replay"
rss() {  # LABEL SOURCE CMD
  run rss "$1 $2" 1 "$3" "{\"label\": \"$1\", \"source\": \"$2\"}"
}
W1P="benches/stream_w1.toml $FINAL --model-out $W/rss.json"
NYCP="benches/stream_nyc.toml $FINAL --model-out $W/rss.json"
rss "W1 1×" stdin "(cat $W/w1_1m.arrows; date +%s.%N > $W/producer_done) | $STREAM $W1P --input -"
rss "W1 4×" stdin "(cat $W/w1_4m.arrows; date +%s.%N > $W/producer_done) | $STREAM $W1P --input -"
rss "W1 1×" replay "$STREAM $W1P --input $W/w1_1m.parquet"
rss "W1 4×" replay "$STREAM $W1P --input $DENSE"
rss "nyc 1×" stdin "(cat $W/nyc_x1.arrows; date +%s.%N > $W/producer_done) | $STREAM $NYCP --input -"
rss "nyc 4×" stdin "(cat $W/nyc_x4.arrows; date +%s.%N > $W/producer_done) | $STREAM $NYCP --input -"
rss "nyc 1×" replay "$STREAM $NYCP --input $NYC"
rss "nyc 4×" replay "$STREAM $NYCP --input $W/nyc_x4"
# A replay keeps every row's score for the summary's AUC (16 bytes a row);
# a live source (stdin) does not. The control: a replay that keeps none.
NOAUC="--set stream.stream_auc=false"
rss "W1 1×" "replay, stream_auc=false" "$STREAM $W1P $NOAUC --input $W/w1_1m.parquet"
rss "W1 4×" "replay, stream_auc=false" "$STREAM $W1P $NOAUC --input $DENSE"

echo "== 4. latency, 50,000 rows/s ($REPS interleaved repetitions)"
for rep in $(seq "$REPS"); do
  for b in 1024 4096 16384; do
    T latency "$RUNS" "$W" stdin 50000 200000 "$b"
    T latency "$RUNS" "$W" replay 50000 200000 "$b"
  done
done

echo "== 5. snapshot cost ($REPS interleaved repetitions)"
SNAP="$STREAM benches/stream_nyc.toml --input $NYC -w 1 --model-out $W/model.json"
for rep in $(seq "$REPS"); do
  for v in final every final-ck every-ck; do
    rm -rf "$W/ck" "$W/model.json"
    args="--set stream.snapshot_every=1"
    case $v in final*) args="$FINAL" ;; esac
    case $v in *-ck) args="$args --set output.checkpoint=$W/ck" ;; esac
    run snap "$v" "$rep" "$SNAP $args"
  done
done

echo "== 5b. cost of --metrics-out (one run each)"
for spec in "nyc 1×|$NYC|stream_nyc" "nyc 4×|$W/nyc_x4|stream_nyc" "W1 1M|$W/w1_1m.parquet|stream_w1"; do
  IFS='|' read -r label path pipe <<< "$spec"
  run metrics "$label" 1 "$STREAM benches/$pipe.toml --input $path $FINAL"
  run metrics "$label +metrics" 1 "$STREAM benches/$pipe.toml --input $path $FINAL --metrics-out $W/metrics-$pipe.jsonl"
done
# W1's progressive metrics over its first 200k rows, beside River's w1-river.
T meta "$RUNS" w1_progressive_200k "$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m["rows_total"] >= 200_000:
        print(json.dumps(dict(rows_total=m["rows_total"], **m["cumulative"])))
        break' "$W/metrics-stream_w1.jsonl")"

T meta "$RUNS" total_s "$(( $(date +%s) - started ))"
cp "$RUNS" "$OUT/runs.jsonl"
T report "$RUNS" "$OUT/summary.md"
echo "wrote $OUT/summary.md"
