#!/usr/bin/env bash
# Fault tolerance measurements (docs/fault-tolerance.md):
#   1. checkpoint time and bytes against model size (10^3 … 10^7 parameters:
#      nycflights hashed into 2^10 … 2^23 slots, one epoch, one checkpoint);
#   2. the overhead of checkpoints at the default interval (every epoch) on
#      W1 and nycflights at 2^22 slots: the same job with and without
#      checkpoints, interleaved, REPS times each, as a ratio of medians;
#   3. recovery time from a SIGKILL to training again (the first training
#      step after the kill, from TIDEMILL_TRACE_STEPS): one process resumed
#      by hand, two processes resumed by hand, one process under
#      --max-restarts (default backoff 1 s).
#
# Usage: BENCH_DATA=DIR benches/fault_tolerance.sh [OUT_DIR]
#   DIR holds W1's dense_train.parquet and dense_test.parquet
#   (python3 benches/peers/gen_dense.py, see benches/strategies.sh).
# Writes OUT_DIR/summary.md (default benches/results/fault-tolerance).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BENCH_DATA:?set BENCH_DATA to the directory of the W1 Parquet files}"
source benches/workloads.sh
OUT=${1:-benches/results/fault-tolerance}
REPS=${REPS:-3}
BIN=target/release/tidemill
cargo build --release --quiet
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; pkill -P $$ 2>/dev/null || true' EXIT
summary="$OUT/summary.md"
{
  echo "# Fault tolerance measurements"
  echo
  echo "$(date -u +%FT%TZ), $(nproc) cores, $(git rev-parse --short HEAD)"
  echo
} > "$summary"

seconds() { python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# 1. Size sweep.
{
  echo "## 1. Checkpoint time and bytes against model size"
  echo
  echo "nycflights (AdaGrad, lazy), one epoch, 1 worker; one checkpoint holds the"
  echo "parameters, AdaGrad's accumulator, the live set and the lazy stamps, sparse"
  echo "where few coordinates are not zero (a hashed model: its live weights). The"
  echo "dense worst case (every coordinate set, Adam): cargo bench --bench checkpoint."
  echo
  echo "| hash_bits | parameters | checkpoint bytes | bytes / parameter | write seconds |"
  echo "|---:|---:|---:|---:|---:|"
} >> "$summary"
for bits in 10 13 16 19 22 23; do
  rm -rf "$WORK/size"
  $BIN --log info train pipelines/nycflights.toml --set data.hash_bits=$bits --set train.epochs=1 \
    --set output.checkpoint="\"$WORK/size\"" --model-out "$WORK/m.json" --metrics-out "$WORK/m.jsonl" \
    > "$WORK/size.json" 2> "$WORK/size.log"
  params=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["params_per_worker"][0])' "$WORK/size.json")
  line=$(grep "checkpoint written" "$WORK/size.log" | tail -1)
  bytes=$(sed -E 's/.*bytes=([0-9]+).*/\1/' <<< "$line")
  secs=$(sed -E 's/.*seconds=([0-9.e-]+).*/\1/' <<< "$line")
  awk -v b=$bits -v p=$params -v y=$bytes -v s=$secs \
    'BEGIN {printf "| %d | %d | %d | %.1f | %.3f |\n", b, p, y, y/p, s}' >> "$summary"
done

# 2. Overhead at the default interval.
{
  echo
  echo "## 2. Overhead of a checkpoint every epoch (the default)"
  echo
  echo "Whole-job seconds (scan, training, evaluation), median of $REPS interleaved runs, 1 worker."
  echo
  echo "| workload | without | with checkpoints | ratio | checkpoint seconds (each) | checkpoints |"
  echo "|---|---:|---:|---:|---:|---:|"
} >> "$summary"
for w in w1 nyc22; do
  : > "$WORK/without"; : > "$WORK/with"; : > "$WORK/each"
  for r in $(seq "$REPS"); do
    eval "$BIN --log warn train ${WORKLOAD[$w]} --model-out $WORK/m.json --metrics-out $WORK/m.jsonl" \
      | seconds >> "$WORK/without"
    rm -rf "$WORK/ov"
    eval "$BIN --log info train ${WORKLOAD[$w]} --set output.checkpoint='\"$WORK/ov\"' --model-out $WORK/m.json --metrics-out $WORK/m.jsonl" \
      2> "$WORK/ov.log" | seconds >> "$WORK/with"
    grep "checkpoint written" "$WORK/ov.log" | sed -E 's/.*seconds=([0-9.e-]+).*/\1/' >> "$WORK/each"
  done
  a=$(median < "$WORK/without"); b=$(median < "$WORK/with"); e=$(median < "$WORK/each")
  n=$(grep -c "checkpoint written" "$WORK/ov.log")
  awk -v w=$w -v a=$a -v b=$b -v e=$e -v n=$n \
    'BEGIN {printf "| %s | %.2f | %.2f | %.3f | %.3f | %d |\n", w, a, b, b/a, e, n}' >> "$summary"
done

# 3. Recovery time.
first_step_after() { # trace file, time in ns: seconds from then to the first step that starts later
  awk -v t="$2" '$3 > t {if (m == "" || $3 < m) m = $3} END {printf "%.2f", (m - t) / 1e9}' "$1"
}
now_ns() { date +%s%N; }
wait_ck() { until ls "$1"/*.tmck >/dev/null 2>&1; do sleep 0.05; done; }
JOB=(pipelines/nycflights.toml --set data.hash_bits=22 --set train.epochs=3)
{
  echo
  echo "## 3. Recovery: from SIGKILL to the first training step after it"
  echo
  echo "nycflights at 2^22 slots; killed after its first checkpoint. 'Restart' is"
  echo "when the resumed process(es) started; 'training' when the first step ran."
  echo
  echo "| setting | kill → restart (s) | kill → training (s) |"
  echo "|---|---:|---:|"
} >> "$summary"
# One process, resumed by hand at once.
rm -rf "$WORK/r1"; T="$WORK/trace1"; : > "$T"
TIDEMILL_TRACE_STEPS=$T $BIN --log warn train "${JOB[@]}" --set output.checkpoint="\"$WORK/r1\"" \
  --model-out "$WORK/m.json" --metrics-out "$WORK/m.jsonl" > /dev/null 2>&1 &
pid=$!; wait_ck "$WORK/r1"; kill -9 $pid; t0=$(now_ns); wait $pid 2>/dev/null || true
t1=$(now_ns)
TIDEMILL_TRACE_STEPS=$T $BIN --log warn train "${JOB[@]}" --set output.checkpoint="\"$WORK/r1\"" \
  --model-out "$WORK/m.json" --metrics-out "$WORK/m.jsonl" --resume > /dev/null 2>&1
awk -v a=$t0 -v b=$t1 -v s="$(first_step_after "$T" "$t0")" \
  'BEGIN {printf "| 1 process, resumed by hand | %.2f | %s |\n", (b-a)/1e9, s}' >> "$summary"
# Two processes: process 1 killed, process 0 exits 7, both resumed by hand.
rm -rf "$WORK/r2"; T="$WORK/trace2"; : > "$T"
hosts="$WORK/hosts"; printf '127.0.0.1:%s\n127.0.0.1:%s\n' "$(free_port)" "$(free_port)" > "$hosts"
two() { # extra args...
  for p in 0 1; do
    TIDEMILL_TRACE_STEPS=$T $BIN --log warn train "${JOB[@]}" --set output.checkpoint="\"$WORK/r2\"" \
      --model-out "$WORK/m.json" --metrics-out "$WORK/m.jsonl" \
      --processes 2 --process $p --hostfile "$hosts" "$@" > /dev/null 2>&1 &
    pids[$p]=$!
  done
}
two; wait_ck "$WORK/r2"; kill -9 "${pids[1]}"; t0=$(now_ns)
wait "${pids[0]}" 2>/dev/null || true; wait "${pids[1]}" 2>/dev/null || true
t1=$(now_ns)
two --resume; wait "${pids[0]}" "${pids[1]}" || true
awk -v a=$t0 -v b=$t1 -v s="$(first_step_after "$T" "$t0")" \
  'BEGIN {printf "| 2 processes (the survivor exits 7), resumed by hand | %.2f | %s |\n", (b-a)/1e9, s}' >> "$summary"
# Supervised: the child killed, the supervisor restarts it after its backoff.
rm -rf "$WORK/r3"; T="$WORK/trace3"; : > "$T"
TIDEMILL_TRACE_STEPS=$T $BIN --log warn train "${JOB[@]}" --set output.checkpoint="\"$WORK/r3\"" \
  --model-out "$WORK/m.json" --metrics-out "$WORK/m.jsonl" --max-restarts 1 > /dev/null 2>&1 &
sup=$!; wait_ck "$WORK/r3"; child=$(pgrep -P $sup | head -1); kill -9 "$child"; t0=$(now_ns)
wait $sup || true
awk -v s="$(first_step_after "$T" "$t0")" \
  'BEGIN {printf "| 1 process under --max-restarts (backoff 1 s) | — | %s |\n", s}' >> "$summary"
{
  echo
  echo "## 4. Dense worst case (cargo bench --bench checkpoint)"
  echo
  cargo bench --quiet --bench checkpoint 2>/dev/null | grep '^|'
} >> "$summary"
cat "$summary"
