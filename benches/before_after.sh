#!/usr/bin/env bash
# Before / after a change: the same training runs with two tidemill
# binaries, interleaved (old, new, old, new, …) so that a busy machine slows
# both alike. Workloads and strategies are those of benches/strategies.sh
# (W1: dense synthetic logistic, 4M × 32; nyc22: nycflights hashed into
# 2^22 slots). Per configuration: the median steady epoch time (mean of
# epochs 2 and 3, from the metrics file) of each binary over $REPS runs, the
# ratio new / old, whether the two binaries wrote the same model bytes and
# the same validation losses to the last bit, every epoch
# ("timing-dependent" where runs of the old binary already differ:
# param-server with staleness).
#
#   git worktree add /tmp/before <rev> && (cd /tmp/before && cargo build --release)
#   python3 benches/peers/gen_dense.py /tmp/bench      # once: W1 (or set BENCH_DATA)
#   bash benches/before_after.sh /tmp/before/target/release/tidemill
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: before_after.sh OLD_BIN [NEW_BIN]}
NEW=${2:-$PWD/target/release/tidemill}
[ $# -ge 2 ] || cargo build --release --quiet
BENCH_DATA=${BENCH_DATA:-/tmp/bench}
OUT=${OUT:-benches/results/before-after-$(date +%Y%m%d-%H%M)}
REPS=${REPS:-3}
EPOCHS=3
mkdir -p "$OUT"

source benches/workloads.sh
# workload:strategy:layout (t<N>: N worker threads; p2: 2 processes)
CONFIGS=${CONFIGS:-"w1:allreduce:t1 w1:allreduce:t2 w1:allreduce:p2 w1:ps-s4:t2 w1:ps-async:t2 w1:model-average:t2 w1:model-parallel:t2
nyc22:allreduce:t1 nyc22:allreduce:t2 nyc22:allreduce:p2 nyc22:ps-s4:t2 nyc22:ps-async:t2 nyc22:model-average:t2 nyc22:model-parallel:t2"}


run() { # bin tag workload strategy layout rep
  local bin=$1 tag=$2 w=$3 s=$4 l=$5 r=$6 dir="$OUT/$3-$4-$5"
  mkdir -p "$dir"
  local -a argv
  eval "argv=(train ${WORKLOAD[$w]} ${STRATEGY[$s]})"
  argv+=(--set "train.epochs=$EPOCHS" --model-out "$dir/$tag.$r.model.json" --metrics-out "$dir/$tag.$r.jsonl" --log warn)
  case $l in
    t*) "$bin" "${argv[@]}" -w "${l#t}" > /dev/null ;;
    p2)
      printf '127.0.0.1:%s\n127.0.0.1:%s\n' "$(free_port)" "$(free_port)" > "$dir/hosts"
      "$bin" "${argv[@]}" -n 2 -p 1 --hostfile "$dir/hosts" > /dev/null &
      "$bin" "${argv[@]}" -n 2 -p 0 --hostfile "$dir/hosts" > /dev/null
      wait ;;
  esac
}

for c in $CONFIGS; do
  IFS=: read -r w s l <<< "$c"
  for r in $(seq 1 "$REPS"); do
    echo "== $w $s $l rep $r" >&2
    run "$OLD" old "$w" "$s" "$l" "$r"
    run "$NEW" new "$w" "$s" "$l" "$r"
  done
done

python3 - "$OUT" <<'EOF' | tee "$OUT/table.md"
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
def steady(path):
    recs = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    recs = [r for r in recs if "elapsed_s" in r]
    return (recs[-1]["elapsed_s"] - recs[0]["elapsed_s"]) / (len(recs) - 1)
def losses(path):
    recs = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return [(r.get("validation") or {}).get("loss") for r in recs if "elapsed_s" in r]
print("| workload | strategy | layout | old steady epoch s | new steady epoch s | new / old | same model | same validation losses |")
print("|---|---|---|---|---|---|---|---|")
ratios = []
for d in sorted(p for p in out.iterdir() if p.is_dir()):
    w, rest = d.name.split("-", 1)
    s, l = rest.rsplit("-", 1)
    t = {tag: statistics.median(steady(p) for p in sorted(d.glob(f"{tag}.*.jsonl"))) for tag in ("old", "new")}
    models = {tag: [p.read_bytes() for p in sorted(d.glob(f"{tag}.*.model.json"))] for tag in ("old", "new")}
    if len(set(models["old"])) > 1:
        # Bounded staleness: which fresher shards a worker reads depends on
        # timing, so runs of the same binary differ too.
        same = "timing-dependent"
    else:
        same = "yes" if set(models["new"]) == set(models["old"]) else "NO"
    curves = {tag: {repr(losses(p)) for p in d.glob(f"{tag}.*.jsonl")} for tag in ("old", "new")}
    if same == "timing-dependent":
        same_losses = "timing-dependent"
    else:
        same_losses = "yes" if curves["old"] == curves["new"] and len(curves["old"]) == 1 else "NO"
    ratios.append(t["new"] / t["old"])
    print(f"| {w} | {s} | {l} | {t['old']:.3f} | {t['new']:.3f} | {t['new']/t['old']:.3f} | {same} | {same_losses} |")
print(f"\ngeometric mean of new / old: {statistics.geometric_mean(ratios):.3f} over {len(ratios)} configurations")
EOF
