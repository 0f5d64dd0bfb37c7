#!/usr/bin/env bash
# nycflights13 as a stream against Vowpal Wabbit, each tidemill run right
# after one of VW's (as in benches/stream.sh section 1, where the slow runs
# are the ones that follow VW): `tidemill stream benches/stream_nyc.toml`
# (1 worker, 2^22 slots, one pass, progressive validation) with one or more
# binaries, against `peers.py nyc-vw-stream` (VW -b 22; its examples/s
# count its training alone). Per binary: median wall, rows/s, the ratio to
# the median VW examples/s of the same run, peak RSS; and whether every
# binary wrote the same model bytes.
#
#   bash benches/peers/setup.sh                         # once: the peers' venv
#   bash benches/stream_vs_vw.sh                        # this checkout's release binary
#   bash benches/stream_vs_vw.sh /tmp/before/target/release/tidemill target/release/tidemill
# Env: REPS (default 5), BENCH_VENV (default .bench-venv), OUT (results dir).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_VENV=${BENCH_VENV:-$PWD/.bench-venv}
PY=$BENCH_VENV/bin/python
REPS=${REPS:-5}
OUT=${OUT:-benches/results/stream-vs-vw-$(date +%Y%m%d-%H%M)}
[ -x "$PY" ] || { echo "stream_vs_vw.sh: no python at $PY: run benches/peers/setup.sh first" >&2; exit 2; }
if [ $# -eq 0 ]; then
  cargo build --release --quiet
  set -- target/release/tidemill
fi
mkdir -p "$OUT"
: > "$OUT/runs.jsonl"
for r in $(seq 1 "$REPS"); do
  for b in $(seq 1 $#); do
    bin=${!b}
    "$PY" benches/peers/peers.py nyc-vw-stream --runs 1 2>/dev/null | tail -1 \
      | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(json.dumps({"who": "vw", "examples_per_s": d["examples_per_s"], "logloss": d["test_logloss"]}))' >> "$OUT/runs.jsonl"
    /usr/bin/time -f '%e %M' -o "$OUT/time" "$bin" stream --log warn benches/stream_nyc.toml \
      --input datasets/nycflights13.parquet -w 1 --model-out "$OUT/model.$b.json" \
      --set stream.snapshot_every=1000000 --set stream.snapshot_seconds=1000000 > "$OUT/summary.$b.json"
    read -r wall rss < "$OUT/time"
    echo "{\"who\": \"$b\", \"bin\": \"$bin\", \"wall_s\": $wall, \"max_rss_kb\": $rss}" >> "$OUT/runs.jsonl"
    echo "rep $r: binary $b ($bin) ${wall}s ${rss}KB" >&2
  done
done
same=yes
for b in $(seq 2 $#); do cmp -s "$OUT/model.1.json" "$OUT/model.$b.json" || same=no; done
python3 - "$OUT" "$same" <<'EOF' | tee "$OUT/table.md"
import json, pathlib, statistics, sys
out, same = pathlib.Path(sys.argv[1]), sys.argv[2]
runs = [json.loads(l) for l in open(out / "runs.jsonl")]
rows = 327346
vw = statistics.median(r["examples_per_s"] for r in runs if r["who"] == "vw")
print(f"VW (-b 22) median examples/s of its training: {vw:,.0f} over {sum(r['who'] == 'vw' for r in runs)} runs")
print()
print("| binary | median wall s | walls | rows/s | / VW | median peak RSS MiB |")
print("|---|---|---|---|---|---|")
for who in sorted({r["who"] for r in runs if r["who"] != "vw"}):
    mine = [r for r in runs if r["who"] == who]
    wall = statistics.median(r["wall_s"] for r in mine)
    rss = statistics.median(r["max_rss_kb"] for r in mine) / 1024
    walls = " ".join(f"{r['wall_s']:.2f}" for r in mine)
    print(f"| {mine[0]['bin']} | {wall:.2f} | {walls} | {rows / wall:,.0f} | {rows / wall / vw:.2f}× | {rss:.0f} |")
print()
print(f"same model bytes from every binary: {same}")
EOF
