#!/usr/bin/env bash
# Where 2 processes lose time against 2 threads (docs/benchmarks.md): one
# pipeline (default the adult pipeline: 77 steps an epoch, little work a
# step), 2 threads in one process against 2 processes over loopback;
# per-step time from the metrics (epochs 6–N), and with `perf` the context
# switches and CPU use of process 0 for 5 and N epochs (the difference is
# per-step). Both layouts must write the same model bytes.
# Then the baseline, timely alone (examples/timely_round.rs): its smallest
# synchronous loop, one trip a round and no work, on 2 threads and on 2
# processes. What a round costs more on processes there, added to this
# pipeline's 2-thread step, is the best ratio a step with one trip can reach.
#   bash benches/two_processes.sh [EPOCHS]      # default 45
# Env: PIPELINE (default pipelines/adult.toml), SETS (space-separated
# --set values for every run, e.g. "train.fold=owners"), TIDEMILL (binary),
# BASELINE=0 to skip timely alone.
set -euo pipefail
cd "$(dirname "$0")/.."
E=${1:-45}
T=${TIDEMILL:-target/release/tidemill}
[ -x "$T" ] || cargo build --release
P=${PIPELINE:-pipelines/adult.toml}
SET=()
for s in ${SETS:-}; do SET+=(--set "$s"); done
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
have_perf() { command -v perf > /dev/null && perf stat -e task-clock true > /dev/null 2>&1; }
stat() { if have_perf; then perf stat -x, -e context-switches,task-clock -o "$1" "${@:2}"; else "${@:2}"; fi; }
threads() {
  stat "$D/t$1.stat" "$T" train "$P" -w 2 "${SET[@]}" --set "train.epochs=$1" \
    --model-out "$D/t.json" --metrics-out "$D/t$1.jsonl" -q > /dev/null
}
processes() {
  printf '127.0.0.1:%s\n127.0.0.1:%s\n' "$(port)" "$(port)" > "$D/hosts"
  "$T" train "$P" -n 2 -p 1 --hostfile "$D/hosts" "${SET[@]}" --set "train.epochs=$1" \
    --model-out "$D/p1.json" -q > /dev/null &
  stat "$D/p$1.stat" "$T" train "$P" -n 2 -p 0 --hostfile "$D/hosts" "${SET[@]}" --set "train.epochs=$1" \
    --model-out "$D/p.json" --metrics-out "$D/p$1.jsonl" -q > /dev/null
  wait
}
for e in 5 "$E"; do threads "$e"; processes "$e"; done
cmp -s "$D/t.json" "$D/p.json" || { echo "two_processes.sh: the models differ" >&2; exit 1; }
python3 - "$D" "$E" <<'PY'
import json, os, sys
d, e = sys.argv[1], int(sys.argv[2])
def records(f):
    return [json.loads(l) for l in open(f)]
def per_step(f):
    rs = records(f)
    return (rs[-1]["elapsed_s"] - rs[4]["elapsed_s"]) / (rs[-1]["steps"] - rs[4]["steps"])
def stat(f):
    if not os.path.exists(f):
        return None
    v = {}
    for line in open(f):
        parts = line.strip().split(",")
        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
            v[parts[2]] = float(parts[0])
    return v
t, p = per_step(f"{d}/t{e}.jsonl"), per_step(f"{d}/p{e}.jsonl")
rs = records(f"{d}/p{e}.jsonl")
steps = rs[-1]["steps"] - rs[4]["steps"]
print(f"per step: 2 threads {t * 1e6:.0f} µs, 2 processes {p * 1e6:.0f} µs, ratio {p / t:.2f} (same model bytes)")
open(f"{d}/t_us", "w").write(f"{t * 1e6:.0f}\n")
for name in ("t", "p"):
    a, b = stat(f"{d}/{name}5.stat"), stat(f"{d}/{name}{e}.stat")
    if a and b:
        cs = (b["context-switches"] - a["context-switches"]) / steps
        cpu = (b["task-clock"] - a["task-clock"]) / steps * 1e3
        print(f"{'2 threads' if name == 't' else '2 processes, process 0'}: {cs:.2f} context switches, {cpu:.0f} µs of CPU a step")
PY
[ "${BASELINE:-1}" = 1 ] || exit 0
R=target/release/examples/timely_round
cargo build -q --release --example timely_round
us() { awk '/µs a round/ { print $NF }'; }
# rounds, work in µs: the µs of a round on 2 threads, then on 2 processes
on_threads() { "$R" "$1" "$2" 2 | us; }
on_processes() {
  printf '127.0.0.1:%s\n127.0.0.1:%s\n' "$(port)" "$(port)" > "$D/hosts"
  "$R" "$1" "$2" 1 2 1 "$D/hosts" > /dev/null &
  local other=$!
  "$R" "$1" "$2" 1 2 0 "$D/hosts" | us
  wait "$other"
}
BT=$(on_threads 20000 0)
BP=$(on_processes 20000 0)
[ -n "$BT" ] && [ -n "$BP" ] || { echo "two_processes.sh: timely_round printed no time" >&2; exit 1; }
python3 - "$(cat "$D/t_us")" "$BT" "$BP" <<'PY'
import sys
t, bt, bp = map(float, sys.argv[1:])
print(f"timely alone, a round with no work: 2 threads {bt:.1f} µs, 2 processes {bp:.1f} µs "
      f"({bp - bt:.0f} µs more on processes)")
print(f"floor for this pipeline on processes: (2-thread step + {bp - bt:.0f} µs) / 2-thread step = {(t + bp - bt) / t:.2f}")
PY
