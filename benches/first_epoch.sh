#!/usr/bin/env bash
# The first cached epoch before and after a change, as a user sees it: the
# wall time of whole `tidemill train` runs (process start to exit: plan,
# statistics scan, epochs, evaluation, model written) with two binaries,
# interleaved (old, new, old, new, …) so that a busy machine slows both
# alike. W1 (dense synthetic logistic, 4M × 32, 5 epochs, cache on) on 1
# and 2 workers. Per configuration: the median wall and the median time to
# the end of epoch 1 (its `elapsed_s`, counted from the end of the scan)
# over $REPS runs, peak RSS, and whether both binaries wrote the same model
# bytes and the same validation losses to the last bit.
#
#   git worktree add /tmp/before <rev> && (cd /tmp/before && cargo build --release)
#   python3 benches/peers/gen_dense.py /tmp/bench      # once: W1 (or set BENCH_DATA)
#   bash benches/first_epoch.sh /tmp/before/target/release/tidemill
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: first_epoch.sh OLD_BIN [NEW_BIN]}
NEW=${2:-$PWD/target/release/tidemill}
[ $# -ge 2 ] || cargo build --release --quiet
BENCH_DATA=${BENCH_DATA:-/tmp/bench}
OUT=${OUT:-benches/results/first-epoch-$(date +%Y%m%d-%H%M)}
REPS=${REPS:-5}
WORKERS=${WORKERS:-"1 2"}
mkdir -p "$OUT"
[ -f "$BENCH_DATA/dense_train.parquet" ] || {
  echo "first_epoch.sh: $BENCH_DATA/dense_train.parquet missing: python3 benches/peers/gen_dense.py $BENCH_DATA" >&2
  exit 2
}
sed -e "s#/tmp/bench#$BENCH_DATA#g" benches/w1.toml > "$OUT/w1.toml"

for w in $WORKERS; do
  for r in $(seq 1 "$REPS"); do
    for tag in old new; do
      bin=$OLD
      [ "$tag" = new ] && bin=$NEW
      base="$OUT/w$w.$tag.$r"
      /usr/bin/time -f '{"wall_s": %e, "max_rss_kb": %M}' -o "$base.time" \
        "$bin" train "$OUT/w1.toml" -w "$w" --set train.epochs=5 --set data.cache=true \
        --model-out "$base.model.json" --metrics-out "$base.jsonl" --log warn > /dev/null
      echo "w$w $tag rep $r: $(cat "$base.time")" >&2
    done
  done
done

python3 - "$OUT" "$WORKERS" <<'EOF' | tee "$OUT/table.md"
import json, pathlib, statistics, sys
out, workers = pathlib.Path(sys.argv[1]), sys.argv[2].split()
def runs(w, tag):
    rows = []
    for t in sorted(out.glob(f"w{w}.{tag}.*.time")):
        base = str(t)[: -len(".time")]
        time = json.loads(t.read_text())
        epochs = [json.loads(l) for l in open(base + ".jsonl") if l.startswith("{")]
        rows.append({"wall": time["wall_s"], "rss": time["max_rss_kb"] / 1024,
                     "epoch1": epochs[0]["elapsed_s"],
                     "losses": [e.get("validation", {}).get("loss") for e in epochs],
                     "model": pathlib.Path(base + ".model.json").read_bytes()})
    return rows
print("| workers | old wall s | new wall s | new / old | old epoch 1 s | new epoch 1 s | old RSS MiB | new RSS MiB | same model | same losses |")
print("|---|---|---|---|---|---|---|---|---|---|")
for w in workers:
    o, n = runs(w, "old"), runs(w, "new")
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    same_model = all(r["model"] == o[0]["model"] for r in o + n)
    same_losses = all(r["losses"] == o[0]["losses"] for r in o + n)
    print(f"| {w} | {med(o,'wall'):.2f} | {med(n,'wall'):.2f} | {med(n,'wall')/med(o,'wall'):.2f}× "
          f"| {med(o,'epoch1'):.3f} | {med(n,'epoch1'):.3f} | {med(o,'rss'):.0f} | {med(n,'rss'):.0f} "
          f"| {'yes' if same_model else 'NO'} | {'yes' if same_losses else 'NO'} |")
EOF
