#!/usr/bin/env bash
# Transparent huge pages against none (docs/benchmarks.md#transparent-huge-pages):
# the same binary as it is (mimalloc asks for huge pages on large regions)
# and with MIMALLOC_ALLOW_THP=0 (it does not), alternating, on W1 (cached and
# streamed, 2 workers), the wide L-BFGS table (2 workers, 299 iterations)
# and nycflights13 streamed (1 worker, 2^22 slots). Wall seconds and peak
# RSS, medians of REPS runs.
#
#   bash benches/huge_pages.sh      # W1 and the wide table generated if missing
#
# Env: REPS (default 3), BENCH_DATA (W1, default /tmp/bench), WIDE_DATA
# (default /tmp/wide), BENCH_VENV (default .bench-venv, to generate them).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DATA=${BENCH_DATA:-/tmp/bench}
WIDE=${WIDE_DATA:-/tmp/wide}
PY=${BENCH_VENV:-$PWD/.bench-venv}/bin/python
T=target/release/tidemill
[ -x "$T" ] || cargo build --release
[ -f "$DATA/dense_train.parquet" ] || "$PY" benches/peers/gen_dense.py "$DATA"
[ -f "$WIDE/train.parquet" ] || "$PY" benches/wide/gen_wide.py "$WIDE"
OUT=benches/results/huge-pages-$(date -u +%Y%m%d-%H%M)
mkdir -p "$OUT"
w1=(train benches/w1.toml -q -w 2 --set "data.train=\"$DATA/dense_train.parquet\"" --set "data.validation={ path = \"$DATA/dense_test.parquet\" }")
wide=(train benches/wide/wide.toml -q -w 2 --set "data.train=\"$WIDE/train.parquet\"" --set "data.validation={ path = \"$WIDE/test.parquet\" }"
  --set optimizer.tolerance=0 --set optimizer.gradient_tolerance=0 --set train.epochs=299 --set train.eval_every=299)
nyc=(stream --log warn benches/stream_nyc.toml --input datasets/nycflights13.parquet -w 1 --model-out "$OUT/nyc.json"
  --set stream.snapshot_every=1000000 --set stream.snapshot_seconds=1000000)
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
{
  echo "Transparent huge pages, $(nproc) cores, $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD), medians of $REPS"
  echo
  echo "| workload | huge pages (default) | none (MIMALLOC_ALLOW_THP=0) | none / huge | peak RSS huge → none |"
  echo "|---|---|---|---|---|"
} > "$OUT/table.md"
for name in w1-cached w1-streamed wide nyc-stream; do
  case $name in
    w1-cached) args=("${w1[@]}" --set data.cache=true) ;;
    w1-streamed) args=("${w1[@]}" --set data.cache=false) ;;
    wide) args=("${wide[@]}") ;;
    nyc-stream) args=("${nyc[@]}") ;;
  esac
  declare -A wall=() rss=()
  for rep in $(seq "$REPS"); do
    for hp in 1 0; do
      echo "$name huge_pages=$hp run $rep ..." >&2
      MIMALLOC_ALLOW_THP=$hp /usr/bin/time -f "%e %M" -o "$OUT/$name-$hp-$rep.time" "$T" "${args[@]}" > "$OUT/$name-$hp-$rep.json"
      read -r s kb < "$OUT/$name-$hp-$rep.time"
      wall[$hp]+=" $s"
      rss[$hp]+=" $kb"
    done
  done
  on=$(median ${wall[1]}); off=$(median ${wall[0]})
  printf '| %s | %.2f s | %.2f s | %.2f× | %d → %d MiB |\n' "$name" "$on" "$off" "$(echo "$off / $on" | bc -l)" \
    "$(( $(median ${rss[1]}) / 1024 ))" "$(( $(median ${rss[0]}) / 1024 ))" >> "$OUT/table.md"
done
cat "$OUT/table.md"
