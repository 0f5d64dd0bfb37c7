#!/usr/bin/env bash
# Wide L-BFGS (docs/benchmarks.md): tidemill's L-BFGS against scikit-learn's
# on a census-like table (234,441 training rows, 28 hashed string columns,
# 12 numeric, 2^18 slots, l2 = 1/n), in one run.
#
#   bash benches/peers/setup.sh          # the peers' venv, once (.bench-venv)
#   bash benches/wide/run.sh [WORKERS]   # default 2
#
# Env: BENCH_DATA (where the table is generated, default /tmp/wide),
#      BENCH_VENV (the peers' venv, default .bench-venv), TIDEMILL (the
#      binary, default target/release/tidemill, built if missing),
#      LBFGS_SETS (--set assignments for every L-BFGS run, space-separated,
#      e.g. "optimizer.sharded=true"). Needs bc.
# Prints a Markdown table and writes it, with each run's summary and
# metrics, under benches/results/wide-<date>/ (the model files stay in
# BENCH_DATA).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-2}
DATA=${BENCH_DATA:-/tmp/wide}
VENV=${BENCH_VENV:-$PWD/.bench-venv}
PY="$VENV/bin/python"
T=${TIDEMILL:-target/release/tidemill}
[ -x "$PY" ] || { echo "run.sh: no venv at $VENV (run: bash benches/peers/setup.sh)" >&2; exit 1; }
[ -x "$T" ] || cargo build --release
OUT=benches/results/wide-$(date -u +%Y%m%d-%H%M)
mkdir -p "$OUT" "$DATA"
[ -f "$DATA/train.parquet" ] || "$PY" benches/wide/gen_wide.py "$DATA"
P=benches/wide/wide.toml
lb=()
for a in ${LBFGS_SETS:-}; do lb+=(--set "$a"); done
paths=(--set "data.train=\"$DATA/train.parquet\"" --set "data.validation={ path = \"$DATA/test.parquet\" }")
novalidation="$DATA/novalidation.toml"
grep -v '^validation' "$P" > "$novalidation"

# wall seconds of one tidemill run; the summary goes to $OUT/$1.json
run() {
  local name=$1 pipeline=$2
  shift 2
  local t0 t1
  t0=$(date +%s.%N)
  "$T" train "$pipeline" -w "$W" --model-out "$DATA/$name.model.json" \
    --metrics-out "$OUT/$name.jsonl" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
field() { "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

echo "scikit-learn ..." >&2
"$PY" benches/wide/sklearn_wide.py "$DATA" > "$OUT/sklearn.json"
sk_wall=$(field "$OUT/sklearn.json" 'd["wall_s"]')
sk_loss=$(field "$OUT/sklearn.json" 'd["test_log_loss"]')

echo "tidemill, default stopping ..." >&2
def_wall=$(run default "$P" "${paths[@]}" ${lb[@]+"${lb[@]}"})
def_eval=$(run default_every10 "$P" "${paths[@]}" ${lb[@]+"${lb[@]}"} --set train.eval_every=10)
sk_tol=$(run sklearn_tolerance "$P" "${paths[@]}" ${lb[@]+"${lb[@]}"} --set optimizer.gradient_tolerance=1e-4 --set train.eval_every=10)

# The first evaluated iteration at scikit-learn's test loss, then a run
# that stops there: Parquet to evaluated model, end to end.
echo "tidemill, to scikit-learn's test loss ..." >&2
trace=$(run trace "$P" "${paths[@]}" ${lb[@]+"${lb[@]}"} --set optimizer.tolerance=0 --set optimizer.gradient_tolerance=0 --set train.epochs=1000)
k=$("$PY" -c "
import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r['validation']['loss'] <= float(sys.argv[2]):
        print(r['epoch']); break
else:
    print(0)" "$OUT/trace.jsonl" "$sk_loss")
[ "$k" -gt 0 ] || { echo "run.sh: tidemill never reached scikit-learn's test loss in 1000 iterations" >&2; exit 1; }
reach_wall=$(run reach "$P" "${paths[@]}" ${lb[@]+"${lb[@]}"} --set optimizer.tolerance=0 --set optimizer.gradient_tolerance=0 \
  --set "train.epochs=$k" --set "train.eval_every=$k")

# Per-iteration cost against one pass over the cached rows: L-BFGS with
# no validation, 101 against 1 iteration; full-batch gradient descent
# (one step per epoch), 101 against 1 epoch.
echo "tidemill, iteration against pass ..." >&2
fixed=(--set optimizer.tolerance=0 --set optimizer.gradient_tolerance=0 --set train.eval_every=1000)
sgd=(--set 'optimizer.kind="sgd"' --set optimizer.batch_size=100000000 --set optimizer.learning_rate=0.5 --set data.units_per_step=1000)
l101=$(run lbfgs101 "$novalidation" "${paths[0]}" "${paths[1]}" ${lb[@]+"${lb[@]}"} "${fixed[@]}" --set train.epochs=101)
l1=$(run lbfgs1 "$novalidation" "${paths[0]}" "${paths[1]}" ${lb[@]+"${lb[@]}"} "${fixed[@]}" --set train.epochs=1)
s101=$(run pass101 "$novalidation" "${paths[0]}" "${paths[1]}" "${sgd[@]}" --set train.epochs=101)
s1=$(run pass1 "$novalidation" "${paths[0]}" "${paths[1]}" "${sgd[@]}" --set train.epochs=1)
evals101=$(tail -1 "$OUT/lbfgs101.jsonl" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['steps'])")

"$PY" - "$OUT" "$W" "$sk_wall" "$sk_loss" "$def_wall" "$def_eval" "$k" "$reach_wall" \
  "$l101" "$l1" "$s101" "$s1" "$evals101" "$sk_tol" <<'EOF' | tee "$OUT/table.md"
import json, os, platform, subprocess, sys, datetime
out, w = sys.argv[1], int(sys.argv[2])
sk_wall, sk_loss, def_wall, def_eval = map(float, sys.argv[3:7])
k = int(sys.argv[7])
reach, l101, l1, s101, s1 = map(float, sys.argv[8:13])
evals = int(sys.argv[13])
sk_tol = float(sys.argv[14])
sk = json.load(open(f"{out}/sklearn.json"))
def summary(n): return json.load(open(f"{out}/{n}.json"))
d, r = summary("default"), summary("reach")
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
sets = os.environ.get("LBFGS_SETS", "")
print(f"Wide L-BFGS, {w} workers, {os.cpu_count()} cores ({cpu}), {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC"
      + (f"; every L-BFGS run with --set {sets}" if sets else "") + "\n")
print("| run | wall s | iterations | stopped by | test log loss | test AUC | wall / sklearn |")
print("|---|---|---|---|---|---|---|")
print(f"| sklearn LogisticRegression(lbfgs, C=1) | {sk_wall:.2f} | {sk['iterations']} | its tolerance | {sk['test_log_loss']:.5f} | {sk['test_auc']:.4f} | 1.00 |")
for name, wall, s in (("tidemill, defaults", def_wall, d), ("tidemill, defaults, eval_every = 10", def_eval, summary("default_every10")),
                      ("tidemill, gradient_tolerance = 1e-4 (sklearn's), eval_every = 10", sk_tol, summary("sklearn_tolerance")),
                      (f"tidemill, to sklearn's test loss ({k} iterations)", reach, r)):
    v = s["validation"]
    by = s["stopped_by"] + (f" ({s['converged_by']})" if s.get("converged_by") else "")
    print(f"| {name} | {wall:.2f} | {s['epochs']} | {by} | {v['loss']:.5f} | {v['auc']:.4f} | {wall / sk_wall:.2f} |")
it = (l101 - l1) / 100
pas = (s101 - s1) / 100
print(f"\nPer L-BFGS iteration {it * 1000:.1f} ms ({evals - 1} evaluations in 100 iterations); "
      f"one full-batch gradient pass over the cached rows {pas * 1000:.1f} ms: iteration / pass = {it / pas:.2f}")
EOF
