#!/usr/bin/env bash
# Every strategy on 1, 2, 4 worker threads and on 2 processes over loopback,
# on two workloads: W1 (dense synthetic logistic, 4M × 32) and nycflights13
# hashed into 2^22 slots (carrier, tailnum, origin, dest, hour; label late15).
# Per run: first and steady epoch time, validation loss per epoch, bytes per
# step (counted by tidemill), peak RSS (GNU time; the larger process for 2
# processes). Writes metrics files, table.md and one SVG per workload
# (loss against wall time, 2 worker threads) into $OUT.
#   python3 benches/peers/gen_dense.py /tmp/bench   # once: W1 (or set BENCH_DATA)
#   bash benches/strategies.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DATA=${BENCH_DATA:-/tmp/bench}
OUT=${OUT:-benches/results/strategies-$(date +%Y%m%d-%H%M)}
EPOCHS=${EPOCHS:-3}
WORKLOADS=${WORKLOADS:-w1 nyc22}
LAYOUTS=${LAYOUTS:-t1 t2 t4 p2}
mkdir -p "$OUT"
cargo build --release --quiet
BIN=$PWD/target/release/tidemill
TIME=/usr/bin/time

source benches/workloads.sh
read -r -a STRATEGIES <<< "${STRATEGIES:-allreduce ps-s4 ps-async model-average model-parallel}"


run() { # workload strategy layout
  local w=$1 s=$2 l=$3 dir="$OUT/$1/$3"
  mkdir -p "$dir"
  local -a argv
  eval "argv=(train ${WORKLOAD[$w]} ${STRATEGY[$s]})"
  argv+=(--set "train.epochs=$EPOCHS" --model-out "$dir/$s.model.json" --metrics-out "$dir/$s.jsonl" --log warn)
  case $l in
    t*) "$TIME" -f '%e %M' -o "$dir/$s.time" "$BIN" "${argv[@]}" -w "${l#t}" > /dev/null ;;
    p2)
      printf '127.0.0.1:%s\n127.0.0.1:%s\n' "$(free_port)" "$(free_port)" > "$dir/hosts"
      for p in 1 0; do
        "$TIME" -f '%e %M' -o "$dir/$s.time.$p" "$BIN" "${argv[@]}" -n 2 -p $p --hostfile "$dir/hosts" > /dev/null &
      done
      wait
      sort -k2 -n "$dir/$s.time.0" "$dir/$s.time.1" | tail -1 > "$dir/$s.time" ;;
  esac
}

for w in $WORKLOADS; do
  for l in $LAYOUTS; do
    for s in "${STRATEGIES[@]}"; do
      echo "== $w $s $l" >&2
      run "$w" "$s" "$l"
    done
  done
  [ -f "$OUT/$w/t2/model-parallel.jsonl" ] && "$BIN" plot "$OUT/$w/t2/"{allreduce,ps-s4,ps-async,model-average,model-parallel}.jsonl \
    -o "$OUT/$w.svg" --title "$w: loss against wall time, 2 worker threads" --log warn
done

python3 - "$OUT" allreduce ps-s4 ps-async model-average model-parallel <<'PY' | tee "$OUT/table.md"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); strategies = sys.argv[2:]
print("| workload | layout | strategy | first epoch s | steady epoch s | val loss by epoch | bytes/step | peak RSS MB | wall s |")
print("|---|---|---|---|---|---|---|---|---|")
for w in ["w1", "nyc22"]:
    for l in ["t1", "t2", "t4", "p2"]:
        for s in strategies:
            d = out / w / l
            if not (d / f"{s}.jsonl").exists():
                continue
            recs = [json.loads(x) for x in (d / f"{s}.jsonl").read_text().splitlines()]
            t = [r["elapsed_s"] for r in recs]
            steady = [b - a for a, b in zip(t, t[1:])]
            loss = ", ".join(f'{r["validation"]["loss"]:.5f}' for r in recs)
            bps = sum(r["bytes_exchanged"] for r in recs) / max(1, recs[-1]["steps"])
            wall, rss = (d / f"{s}.time").read_text().split()[-2:]
            st = f"{sum(steady)/len(steady):.3f}" if steady else "-"
            print(f"| {w} | {l} | {s} | {t[0]:.3f} | {st} | {loss} | {bps:,.0f} | {int(rss)/1024:.0f} | {float(wall):.1f} |")
PY
echo "results: $OUT" >&2
