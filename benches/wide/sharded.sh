#!/usr/bin/env bash
# Sharded (vector-free) L-BFGS against the whole-vector one on the wide
# census-like table (docs/benchmarks.md#sharded-l-bfgs), in one run.
#
#   bash benches/peers/setup.sh             # once: the venv that generates the table
#   bash benches/wide/sharded.sh [WORKERS]  # default 2
#
# Per-iteration cost: the wall of N iterations minus the wall of 1
# (scan, decode and the first evaluation cancel), over N − 1; N = 101 at
# 2^18 slots and 41 at 2^22. Then each mode end to end with the default
# stopping rule at 2^18. Medians of 3, the modes alternating.
#
# Env: BENCH_DATA (default /tmp/wide), BENCH_VENV (default .bench-venv),
#      TIDEMILL (default target/release/tidemill). Needs bc.
# Writes benches/results/sharded-<date>/table.md and each run's summary.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-2}
DATA=${BENCH_DATA:-/tmp/wide}
VENV=${BENCH_VENV:-$PWD/.bench-venv}
T=${TIDEMILL:-target/release/tidemill}
[ -x "$T" ] || cargo build --release
if [ ! -f "$DATA/train.parquet" ]; then
  [ -x "$VENV/bin/python" ] || { echo "sharded.sh: no table in $DATA and no venv at $VENV (run: bash benches/peers/setup.sh)" >&2; exit 1; }
  mkdir -p "$DATA"
  "$VENV/bin/python" benches/wide/gen_wide.py "$DATA"
fi
OUT=benches/results/sharded-$(date -u +%Y%m%d-%H%M)
mkdir -p "$OUT"
P=benches/wide/wide.toml
paths=(--set "data.train=\"$DATA/train.parquet\"" --set "data.validation={ path = \"$DATA/test.parquet\" }")

# wall seconds and peak RSS (KiB) of one run: "SECONDS KIB"
run() {
  local name=$1
  shift
  /usr/bin/time -f "%e %M" -o "$OUT/$name.time" \
    "$T" train "$P" -w "$W" "${paths[@]}" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  cat "$OUT/$name.time"
}
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
fixed=(--set optimizer.tolerance=0 --set optimizer.gradient_tolerance=0 --set train.eval_every=100000)

{
  echo "Sharded L-BFGS against whole-vector L-BFGS, $W workers, $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo
  echo "| slots | L-BFGS | ms / iteration | vs whole | peak RSS (N iterations) |"
  echo "|---|---|---|---|---|"
} > "$OUT/table.md"
for bits in 18 22; do
  n=$([ "$bits" = 18 ] && echo 101 || echo 41)
  declare -A per=() rss=()
  for mode in false true; do per[$mode]=""; done
  for rep in 1 2 3; do
    for mode in false true; do
      echo "2^$bits sharded=$mode, run $rep ..." >&2
      read -r t1 _ < <(run "b${bits}-${mode}-1-$rep" --set "data.hash_bits=$bits" --set "optimizer.sharded=$mode" "${fixed[@]}" --set train.epochs=1)
      read -r tn kb < <(run "b${bits}-${mode}-$n-$rep" --set "data.hash_bits=$bits" --set "optimizer.sharded=$mode" "${fixed[@]}" --set "train.epochs=$n")
      per[$mode]+=" $(echo "($tn - $t1) * 1000 / ($n - 1)" | bc -l)"
      rss[$mode]=$kb
    done
  done
  whole=$(median ${per[false]})
  for mode in false true; do
    m=$(median ${per[$mode]})
    name=$([ "$mode" = true ] && echo sharded || echo whole)
    printf '| 2^%s | %s | %.1f | %.2f× | %d MiB |\n' "$bits" "$name" "$m" "$(echo "$m / $whole" | bc -l)" "$(( ${rss[$mode]} / 1024 ))" >> "$OUT/table.md"
  done
done

{
  echo
  echo "End to end at 2^18 with the default stopping rule (Parquet to evaluated model):"
  echo
  echo "| L-BFGS | wall (median of 3) | vs whole | iterations | converged_by | test log loss |"
  echo "|---|---|---|---|---|---|"
} >> "$OUT/table.md"
declare -A walls=()
for rep in 1 2 3; do
  for mode in false true; do
    echo "defaults sharded=$mode, run $rep ..." >&2
    read -r t _ < <(run "default-$mode-$rep" --set "optimizer.sharded=$mode")
    walls[$mode]+=" $t"
  done
done
whole=$(median ${walls[false]})
for mode in false true; do
  m=$(median ${walls[$mode]})
  name=$([ "$mode" = true ] && echo sharded || echo whole)
  summary=$(python3 -c "
import json,sys
d = json.load(open(sys.argv[1]))
print(d['epochs'], d.get('converged_by'), '%.5f' % d['validation']['loss'])" "$OUT/default-$mode-1.json")
  read -r its by loss <<< "$summary"
  printf '| %s | %.2f s | %.2f× | %s | %s | %s |\n' "$name" "$m" "$(echo "$m / $whole" | bc -l)" "$its" "$by" "$loss" >> "$OUT/table.md"
done
cat "$OUT/table.md"
