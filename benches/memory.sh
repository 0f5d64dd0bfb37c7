#!/usr/bin/env bash
# Wall time and peak RSS of whole `tidemill` runs with two binaries,
# interleaved (old, new, old, new, …), and whether both wrote the same
# model bytes (docs/benchmarks.md, "Memory of the CLI"). Workloads:
#   w1-e1      W1 cached, 1 epoch, 2 workers: the issue's end-to-end W1 job
#   w1-e5      W1 cached, 5 epochs, 2 workers
#   w1-stream  W1 streamed (cache off), 3 epochs, 2 workers
#   wide       the wide L-BFGS table, 2^18 slots, 100 iterations, 2 workers
#   nyc22      nycflights13 hashed into 2^22 slots, allreduce, 3 epochs, 2 workers
#   nyc-s1     `tidemill stream` nycflights13, 2^22 slots, 1 worker
#   nyc-s2     the same, 2 workers
#   w1-stdin   `tidemill stream` W1 from stdin (Arrow IPC, 4M rows), 1 worker
# Medians of REPS runs; /usr/bin/time's %e and %M (RSS in MiB, rounded down).
#
#   git worktree add /tmp/before <rev> && (cd /tmp/before && cargo build --release)
#   bash benches/memory.sh /tmp/before/target/release/tidemill
#
# Env: REPS (3), WORKLOADS (all of the above), BENCH_DATA (W1, /tmp/bench),
# WIDE_DATA (/tmp/wide), BENCH_VENV (.bench-venv, to generate them).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: memory.sh OLD_BIN [NEW_BIN]}
NEW=${2:-$PWD/target/release/tidemill}
[ $# -ge 2 ] || cargo build --release --quiet
REPS=${REPS:-3}
DATA=${BENCH_DATA:-/tmp/bench}
WIDE=${WIDE_DATA:-/tmp/wide}
PY=${BENCH_VENV:-$PWD/.bench-venv}/bin/python
WORKLOADS=${WORKLOADS:-"w1-e1 w1-e5 w1-stream wide nyc22 nyc-s1 nyc-s2 w1-stdin"}
OUT=${OUT:-benches/results/memory-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$OUT"
[ -f "$DATA/dense_train.parquet" ] || "$PY" benches/peers/gen_dense.py "$DATA"
[ -f "$WIDE/train.parquet" ] || "$PY" benches/wide/gen_wide.py "$WIDE"
[ -f "$DATA/dense_train.arrows" ] || "$PY" -c '
import sys, pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
with pa.OSFile(sys.argv[2], "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
    for b in t.to_batches(max_chunksize=65536):
        w.write_batch(b)
' "$DATA/dense_train.parquet" "$DATA/dense_train.arrows"

w1=(train benches/w1.toml -q -w 2 --set "data.train=\"$DATA/dense_train.parquet\"" --set "data.validation={ path = \"$DATA/dense_test.parquet\" }")
args_of() { # workload model_path: the argv, quoted for eval
  set -- "$1" "$(printf '%q' "$2")"
  local wide_train wide_test
  wide_train=$(printf '%q' "data.train=\"$WIDE/train.parquet\"")
  wide_test=$(printf '%q' "data.validation={ path = \"$WIDE/test.parquet\" }")
  case $1 in
    w1-e1) echo "${w1[@]@Q} --set data.cache=true --set train.epochs=1 --model-out $2" ;;
    w1-e5) echo "${w1[@]@Q} --set data.cache=true --set train.epochs=5 --model-out $2" ;;
    w1-stream) echo "${w1[@]@Q} --set data.cache=false --set train.epochs=3 --model-out $2" ;;
    wide) echo "train benches/wide/wide.toml -q -w 2 --set $wide_train --set $wide_test --set optimizer.tolerance=0 --set optimizer.gradient_tolerance=0 --set train.epochs=100 --set train.eval_every=100 --model-out $2" ;;
    nyc22) echo "train pipelines/nycflights.toml -q -w 2 --set data.hash_bits=22 --set train.epochs=3 --model-out $2" ;;
    w1-stdin) echo "stream --log warn benches/stream_w1.toml --input - -w 1 --model-out $2" ;;
    nyc-s1|nyc-s2) echo "stream --log warn benches/stream_nyc.toml --input datasets/nycflights13.parquet -w ${1#nyc-s} --model-out $2 --set stream.snapshot_every=1000000 --set stream.snapshot_seconds=1000000" ;;
  esac
}
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
{
  echo "Whole runs, old: $OLD, new: $NEW; $(nproc) cores, $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD), medians of $REPS"
  echo
  echo "| workload | old wall s | new wall s | new / old | old peak RSS MiB | new peak RSS MiB | new / old | same model |"
  echo "|---|---|---|---|---|---|---|---|"
} > "$OUT/table.md"
for w in $WORKLOADS; do
  declare -A wall=() rss=()
  for rep in $(seq "$REPS"); do
    # Alternating which binary runs first, so that neither always meets
    # a cold page cache.
    order="old new"; [ $((rep % 2)) = 0 ] && order="new old"
    for tag in $order; do
      bin=$OLD; [ $tag = new ] && bin=$NEW
      echo "$w $tag run $rep ..." >&2
      eval "argv=($(args_of "$w" "$OUT/$w-$tag-$rep.model.json"))"
      input=/dev/null; [ "$w" = w1-stdin ] && input=$DATA/dense_train.arrows
      /usr/bin/time -f "%e %M" -o "$OUT/$w-$tag-$rep.time" "$bin" "${argv[@]}" < "$input" > /dev/null
      read -r s kb < "$OUT/$w-$tag-$rep.time"
      wall[$tag]+=" $s"
      rss[$tag]+=" $kb"
    done
  done
  same=yes
  for rep in $(seq "$REPS"); do
    # A stream's model records its wall time; compare the weights alone.
    python3 - "$OUT/$w-old-$rep.model.json" "$OUT/$w-new-$rep.model.json" <<'EOF' || same=no
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
strip = lambda m: {k: v for k, v in m.items() if k not in ("seconds", "stream", "trained_at", "build")}
sys.exit(0 if strip(a) == strip(b) else 1)
EOF
  done
  o=$(median ${wall[old]}); n=$(median ${wall[new]})
  ro=$(median ${rss[old]}); rn=$(median ${rss[new]})
  printf '| %s | %.2f | %.2f | %.2f× | %d | %d | %.2f× | %s |\n' "$w" "$o" "$n" "$(echo "$n / $o" | bc -l)" \
    "$(( ro / 1024 ))" "$(( rn / 1024 ))" "$(echo "$rn / $ro" | bc -l)" "$same" >> "$OUT/table.md"
  rm -f "$OUT"/*.model.json
done
cat "$OUT/table.md"
