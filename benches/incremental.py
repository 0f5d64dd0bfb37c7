"""Exact incremental models (docs/incremental.md), measured in one run:

1. time to update a model after forgetting 1, 100 and 10,000 rows
   (`tidemill forget` on a copy of the state) against retraining from
   scratch on the same machine in the same run: `train` with the exact
   optimizer (statistics and solve) and `train` with L-BFGS (the iterative
   optimizer a user would otherwise run), on california_housing (ridge,
   20,640 rows), nycflights13 (ridge on 5 numeric columns, and multinomial
   naive Bayes on its hashed categorical columns, 327,346 rows; naive Bayes
   has no iterative optimizer, so only the exact retrain is its baseline)
   and the dense W1 data (ridge, 4M x 32);
2. forgetting rows of models without sufficient statistics (logistic by
   L-BFGS): `tidemill forget` re-optimises warm-started from the previous
   model over the rows that remain, against L-BFGS from zero on the same
   rows: wall time, iterations, and the objectives' relative difference, on
   adult (48,842 rows, hashed categoricals) and nycflights13 (327,346
   rows, 2^18 hashed slots); and hinge on adult, whose dual is solved
   exactly after L-BFGS, against training it from scratch with a state
   (section hinge; nycflights13's 2^18 slots put more rows on the margin
   than the exact step takes, and the solve fails with exit 6);
3. what the state holds against the data: the state directory's bytes
   against the Parquet file's and the raw values' (rows x columns x 8),
   and the peak RSS of an exact stream that keeps its rows arranged for
   retraction (`--retract`) against one that does not;
4. what committing an exact stream's `[output] state` at every batch
   costs (section stream_state): nycflights13 in time order, 10,000-row
   batches, a model file at every batch either way; with and without a
   7-day window (a window's state is the window's rows, rewritten at each
   commit);
5. what `forget --erase` costs against a plain forget (section erase):
   nycflights13 ridge state (2 workers' runs), forgetting 1 and 100 keys.

Usage: python benches/incremental.py OUT_DIR [W1_PARQUET]
Every figure is a median of REPS (env, default 3) runs; ratios are taken
within this run. Needs pyarrow (the peers' venv has it). SECTIONS (env,
comma-separated among exact, refit, hinge, stream, stream_state, erase; default all) runs only those
and takes the others from OUT_DIR/results.json of an earlier run.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BIN = os.path.abspath(os.environ.get("TIDEMILL_BIN", "target/release/tidemill"))
REPS = int(os.environ.get("REPS", "3"))


def run(cmd, stdin=None):
    """Runs cmd; returns (wall seconds, peak RSS MiB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.PIPE if stdin is not None else None)
    out, err = p.communicate(stdin)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {err.decode()[-2000:]}")
    return wall, out.decode()


def run_rss(cmd):
    """Runs cmd under /usr/bin/time; returns (wall seconds, peak RSS MiB).

    (Not wait4 on a child of this process: posix_spawn's child shares this
    process's memory until it execs, and pyarrow's pool would count.)
    """
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr[-2000:]}")
    return wall, int(p.stderr.strip().splitlines()[-1]) / 1024.0


def med(xs):
    return statistics.median(xs)


def keyed(src, dst, features, label, key_prefix):
    t = pq.read_table(src, columns=list(dict.fromkeys(features + [label])))
    t = t.append_column("id", pa.array([f"{key_prefix}{i}" for i in range(t.num_rows)]))
    pq.write_table(t, dst, row_group_size=65536)
    return t.num_rows


def pipeline(path, data, label, features, state, optimizer, extra="", categorical=None):
    feats = ", ".join(f'"{f}"' for f in features)
    if categorical:
        cats = ", ".join(f'"{f}"' for f in categorical)
        model = (f'categorical = [{cats}]\nhash_bits = 18\n'
                 f'[model]\nkind = "multinomial_nb"\n')
    else:
        model = 'standardize = true\n[model]\nkind = "linear"\nl2 = 0.001\n'
    text = (f'[data]\ntrain = "{data}"\nlabel = "{label}"\nkey = "id"\nfeatures = [{feats}]\n'
            f'on_missing = "skip_row"\n{model}[optimizer]\nkind = "{optimizer}"\n{extra}')
    if state:
        text += f'[output]\nstate = "{state}"\n'
    with open(path, "w") as f:
        f.write(text)
    return path


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def main():
    out_dir = sys.argv[1]
    w1 = sys.argv[2] if len(sys.argv) > 2 else "/tmp/bench/dense_train.parquet"
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="incremental-bench.")
    all_sections = {"exact", "refit", "hinge", "stream", "stream_state", "erase"}
    sections = set(os.environ.get("SECTIONS", ",".join(sorted(all_sections))).split(","))
    results = {"reps": REPS, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "ncpu": os.cpu_count(), "datasets": {}}
    earlier = {}
    if sections != all_sections:
        with open(os.path.join(out_dir, "results.json")) as f:
            earlier = json.load(f)
        results["datasets"] = earlier["datasets"]
        results["refit"] = earlier.get("refit", {})
        results["hinge"] = earlier.get("hinge", {})
        results["stream_w1"] = earlier["stream_w1"]
        results["stream_state"] = earlier.get("stream_state", {})
        results["erase"] = earlier.get("erase", {})
        results["sections_rerun"] = sorted(sections)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results["commit"] = commit
    w1_cols = [f"f{i}" for i in range(32)]
    nyc_cats = ["carrier", "tailnum", "origin", "dest", "hour"]
    sets = [
        ("california_housing", "datasets/california_housing.parquet", "MedHouseVal",
         ["MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup", "Latitude", "Longitude"], None),
        ("nycflights13", "datasets/nycflights13.parquet", "arr_delay",
         ["dep_delay", "distance", "hour", "sched_dep_time", "month"], None),
        ("nycflights13 multinomial_nb (hashed)", "datasets/nycflights13.parquet", "late15", nyc_cats, nyc_cats),
        ("W1 dense 4M x 32", w1, "label", w1_cols, None),
    ]
    for name, src, label, features, cats in sets if "exact" in sections else []:
        data = os.path.join(work, name.split()[0] + ".parquet")
        rows = keyed(src, data, features, label, "k")
        state = os.path.join(work, name.split()[0] + ".state")
        p_exact = pipeline(os.path.join(work, "exact.toml"), data, label, features, state, "exact",
                           categorical=cats)
        p_lbfgs = None if cats else pipeline(os.path.join(work, "lbfgs.toml"), data, label, features,
                                             None, "lbfgs", "[train]\nepochs = 200\n")
        model = os.path.join(work, "m.json")
        r = {"rows": rows, "parquet_bytes": os.path.getsize(data),
             "raw_bytes": rows * (len(features) + 1) * 8}
        exact, lbfgs = [], []
        for _ in range(REPS):
            shutil.rmtree(state, ignore_errors=True)
            exact.append(run([BIN, "train", p_exact, "--model-out", model, "-w", "2"])[0])
            if p_lbfgs:
                lbfgs.append(run([BIN, "train", p_lbfgs, "--model-out", model, "-w", "2"])[0])
        r["train_exact_s"] = med(exact)
        r["train_lbfgs_s"] = med(lbfgs) if lbfgs else None
        if cats:
            r["raw_bytes"] = rows * (len(features) + 1) * 8
        r["state_bytes"] = dir_bytes(state)
        for n in (1, 100, 10000):
            times = []
            for rep in range(REPS):
                copy = state + ".copy"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(state, copy)
                p_copy = pipeline(os.path.join(work, "copy.toml"), data, label, features, copy, "exact",
                                  categorical=cats)
                step = max(1, rows // n)
                keys = "id\n" + "".join(f"k{(i * step + rep) % rows}\n" for i in range(n))
                times.append(run([BIN, "forget", p_copy, "--keys", "-", "--model-out", model],
                                 stdin=keys.encode())[0])
            r[f"forget_{n}_s"] = med(times)
        results["datasets"][name] = r
        print(name, json.dumps(r), flush=True)
    # Re-optimisation (logistic by L-BFGS) after forgetting.
    if "refit" in sections:
        results["refit"] = {}
    if "hinge" in sections:
        results["hinge"] = {}
    adult_cats = ["workclass", "education", "marital-status", "occupation", "relationship", "race",
                  "gender", "native-country"]
    # (section, name, data, label, hashed columns, bits, [data] extra, kind,
    # [optimizer] and [train] lines). Logistic stops on the gradient; hinge's
    # L-BFGS only starts the exact dual solve, and its scratch run keeps a
    # state too (that is what makes it exact).
    smooth = 'gradient_tolerance = 1e-9\n[train]\nepochs = 1000\n'
    refit_sets = [
        ("refit", "adult logistic", "datasets/adult.parquet", "income", adult_cats, 12,
         'classes = ["<=50K", ">50K"]\n', "logistic", smooth),
        ("refit", "nycflights13 logistic", "datasets/nycflights13.parquet", "late15",
         ["carrier", "tailnum", "origin", "dest", "hour"], 18, "", "logistic", smooth),
        ("hinge", "adult hinge", "datasets/adult.parquet", "income", adult_cats, 12,
         'classes = ["<=50K", ">50K"]\nstandardize = true\n', "hinge", '[train]\nepochs = 100\n'),
    ]
    for section, name, src, label, cats, bits, extra, kind, opt in refit_sets:
        if section not in sections:
            continue
        # Hinge also takes adult's numeric columns (as tests/reoptimise.rs
        # does): with only its hashed columns, more rows sit on the margin
        # than the exact step takes, and a retrain may fail (exit 6).
        numeric = (["age", "fnlwgt", "educational-num", "capital-gain", "capital-loss",
                    "hours-per-week"] if kind == "hinge" else [])
        t = pq.read_table(src)
        t = t.append_column("id", pa.array([f"k{i}" for i in range(t.num_rows)]))
        rows = t.num_rows
        data = os.path.join(work, "refit.parquet")
        pq.write_table(t, data, row_group_size=65536)
        feats = ", ".join(f'"{c}"' for c in cats)
        all_feats = ", ".join(f'"{c}"' for c in numeric + cats)

        def refit_pipeline(path, train, state):
            text = (f'[data]\ntrain = "{train}"\nlabel = "{label}"\nkey = "id"\n{extra}'
                    f'features = [{all_feats}]\ncategorical = [{feats}]\nhash_bits = {bits}\n'
                    f'[model]\nkind = "{kind}"\nl2 = 0.0001\n[optimizer]\nkind = "lbfgs"\n{opt}')
            if state:
                text += f'[output]\nstate = "{state}"\n'
            with open(path, "w") as f:
                f.write(text)
            return path

        state = os.path.join(work, "refit.state")
        shutil.rmtree(state, ignore_errors=True)
        base_model = os.path.join(work, "refit.json")
        p_state = refit_pipeline(os.path.join(work, "refit.toml"), data, state)
        wall, out = run([BIN, "train", p_state, "--model-out", base_model, "-w", "2"])
        r = {"rows": rows, "train_s": wall, "train_iterations": json.loads(out)["epochs"]}
        for n in (1, 100, 10000):
            step = max(1, rows // n)
            gone = set((i * step) % rows for i in range(n))
            keys = "id\n" + "".join(f"k{i}\n" for i in sorted(gone))
            rest = os.path.join(work, "refit_rest.parquet")
            pq.write_table(t.filter(pa.array([i not in gone for i in range(rows)])), rest,
                           row_group_size=65536)
            rest_state = os.path.join(work, "refit_rest.state") if kind == "hinge" else None
            p_rest = refit_pipeline(os.path.join(work, "refit_rest.toml"), rest, rest_state)
            warm, cold = [], []
            for _ in range(REPS):
                copy = state + ".copy"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(state, copy)
                model = os.path.join(work, "refit_copy.json")
                shutil.copy(base_model, model)
                p_copy = refit_pipeline(os.path.join(work, "refit_copy.toml"), data, copy)
                w, _ = run([BIN, "forget", p_copy, "--keys", "-", "--model-out", model, "-w", "2"],
                           stdin=keys.encode())
                with open(model) as f:
                    warm_t = json.load(f)["training"]
                warm.append(w)
                if rest_state:
                    shutil.rmtree(rest_state, ignore_errors=True)
                w, out = run([BIN, "train", p_rest, "--model-out", os.path.join(work, "cold.json"),
                              "-w", "2"])
                cold_out = json.loads(out)
                cold.append(w)
            r[f"forget_{n}"] = {
                "warm_s": med(warm), "warm_iterations": warm_t["epochs"],
                "scratch_s": med(cold), "scratch_iterations": cold_out["epochs"],
                "objective_rel_diff": abs(warm_t["objective"] - cold_out["objective"])
                / abs(cold_out["objective"]),
            }
        results[section][name] = r
        print(name, json.dumps(r), flush=True)
    if "stream" in sections:
        # Memory of the arranged rows: an exact stream of W1 with and without
        # --retract (one key), peak RSS.
        data = os.path.join(work, "W1.parquet")
        if not os.path.exists(data):
            keyed(w1, data, w1_cols, "label", "k")
        keys = os.path.join(work, "one.csv")
        with open(keys, "w") as f:
            f.write("id\nk17\n")
        p_stream = pipeline(os.path.join(work, "stream.toml"), data, "label", w1_cols, None, "exact",
                            "[stream]\nbatch_rows = 65536\n")
        plain, arranged = [], []
        for _ in range(REPS):
            plain.append(run_rss([BIN, "stream", p_stream, "--input", data]))
            arranged.append(run_rss([BIN, "stream", p_stream, "--input", data, "--retract", keys]))
        results["stream_w1"] = {
            "plain_s": med([w for w, _ in plain]), "plain_rss_mib": med([m for _, m in plain]),
            "retract_s": med([w for w, _ in arranged]), "retract_rss_mib": med([m for _, m in arranged]),
        }
        print("stream", json.dumps(results["stream_w1"]), flush=True)
    if "erase" in sections:
        features = ["dep_delay", "distance", "hour", "sched_dep_time", "month"]
        data = os.path.join(work, "nyc-erase.parquet")
        rows = keyed("datasets/nycflights13.parquet", data, features, "arr_delay", "k")
        state = os.path.join(work, "erase.state")
        shutil.rmtree(state, ignore_errors=True)
        p = pipeline(os.path.join(work, "erase.toml"), data, "arr_delay", features, state, "exact")
        model = os.path.join(work, "m.json")
        run([BIN, "train", p, "--model-out", model, "-w", "2"])
        r = {"rows": rows, "state_bytes": dir_bytes(state)}
        for n in (1, 100):
            for mode, extra in (("plain", []), ("erase", ["--erase"])):
                times = []
                for rep in range(REPS):
                    copy = state + ".copy"
                    shutil.rmtree(copy, ignore_errors=True)
                    shutil.copytree(state, copy)
                    p_copy = pipeline(os.path.join(work, "erase-copy.toml"), data, "arr_delay", features,
                                      copy, "exact")
                    step = max(1, rows // n)
                    keys = "id\n" + "".join(f"k{(i * step + rep) % rows}\n" for i in range(n))
                    times.append(run([BIN, "forget", p_copy, "--keys", "-", "--model-out", model] + extra,
                                     stdin=keys.encode())[0])
                r[f"{mode}_{n}_s"] = med(times)
        results["erase"] = r
        print("erase", json.dumps(r), flush=True)
    if "stream_state" in sections:
        t = pq.read_table("datasets/nycflights13.parquet").sort_by("time_hour")
        t = t.append_column("id", pa.array([f"f{i}" for i in range(t.num_rows)]))
        data = os.path.join(work, "nyc-time.parquet")
        pq.write_table(t, data, row_group_size=65536)
        features = ["dep_delay", "distance", "hour", "sched_dep_time", "month"]
        window = '\nwindow = { column = "time_hour", length = "7d" }'
        cases = {}
        for name, win, kept in [("no window, no state", "", False), ("no window, state", "", True),
                                ("7-day window, no state", window, False), ("7-day window, state", window, True)]:
            times = []
            for _ in range(REPS):
                state = os.path.join(work, "stream-state") if kept else None
                if state:
                    shutil.rmtree(state, ignore_errors=True)
                p = pipeline(os.path.join(work, "stream-state.toml"), data, "arr_delay", features, state, "exact",
                             f"[stream]\nbatch_rows = 10000\nsnapshot_every = 1{win}\n")
                wall, _ = run([BIN, "stream", p, "--input", data, "--model-out", os.path.join(work, "m.json")])
                times.append(wall)
            cases[name] = {"s": med(times), "state_bytes": dir_bytes(state) if kept else 0}
            print("stream_state", name, json.dumps(cases[name]), flush=True)
        results["stream_state"] = {"rows": t.num_rows, "batches": -(-t.num_rows // 10000), "cases": cases}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"# Exact incremental models, measured {results['date']} (commit {commit}, "
             f"{results['ncpu']} cores, medians of {REPS})", "",
             "| data | rows | train exact (s) | train L-BFGS (s) | forget 1 (s) | forget 100 (s) | forget 10,000 (s) "
             "| forget 1 / exact | forget 1 / L-BFGS | forget 10,000 / exact |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["datasets"].items():
        lb = r["train_lbfgs_s"]
        lb_s = f"{lb:.3f}" if lb else "—"
        vs_lb = f"{r['forget_1_s'] / lb:.3f}" if lb else "—"
        lines.append(f"| {name} | {r['rows']:,} | {r['train_exact_s']:.3f} | {lb_s} | "
                     f"{r['forget_1_s']:.3f} | {r['forget_100_s']:.3f} | {r['forget_10000_s']:.3f} | "
                     f"{r['forget_1_s'] / r['train_exact_s']:.3f} | {vs_lb} | "
                     f"{r['forget_10000_s'] / r['train_exact_s']:.3f} |")
    lines += ["", "| data | Parquet (MB) | raw values (MB) | state (MB) | state / raw |", "|---|---|---|---|---|"]
    for name, r in results["datasets"].items():
        lines.append(f"| {name} | {r['parquet_bytes'] / 1e6:.1f} | {r['raw_bytes'] / 1e6:.1f} | "
                     f"{r['state_bytes'] / 1e6:.1f} | {r['state_bytes'] / r['raw_bytes']:.2f} |")
    lines += ["", "| re-optimised by L-BFGS (hinge: then its dual, exactly) | rows | forget | warm (s) | scratch (s) | warm / scratch "
              "| iterations warm | iterations scratch | objective rel. diff |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in list(results["refit"].items()) + list(results.get("hinge", {}).items()):
        for n in (1, 100, 10000):
            f = r[f"forget_{n}"]
            lines.append(f"| {name} | {r['rows']:,} | {n:,} | {f['warm_s']:.2f} | {f['scratch_s']:.2f} | "
                         f"{f['warm_s'] / f['scratch_s']:.2f} | {f['warm_iterations']} | "
                         f"{f['scratch_iterations']} | {f['objective_rel_diff']:.1e} |")
    s = results["stream_w1"]
    lines += ["", "| W1 exact stream | wall (s) | peak RSS (MiB) |", "|---|---|---|",
              f"| rows not kept (no --retract) | {s['plain_s']:.2f} | {s['plain_rss_mib']:.0f} |",
              f"| rows arranged for --retract | {s['retract_s']:.2f} | {s['retract_rss_mib']:.0f} |"]
    er = results.get("erase")
    if er:
        lines += ["", f"| nycflights13 ridge state ({er['rows']:,} rows, {er['state_bytes'] / 1e6:.1f} MB) "
                  "| plain forget (s) | forget --erase (s) | erase / plain |", "|---|---|---|---|"]
        for n in (1, 100):
            lines.append(f"| forget {n} | {er[f'plain_{n}_s']:.3f} | {er[f'erase_{n}_s']:.3f} | "
                         f"{er[f'erase_{n}_s'] / er[f'plain_{n}_s']:.1f} |")
    ss = results.get("stream_state")
    if ss:
        c = ss["cases"]
        lines += ["", f"| nycflights13 exact stream, {ss['rows']:,} rows, {ss['batches']} batches, "
                  "a commit at every batch | wall (s) | with state / without | state (MB) |", "|---|---|---|---|"]
        for win in ("no window", "7-day window"):
            base = c[f"{win}, no state"]["s"]
            for kept in ("no state", "state"):
                r = c[f"{win}, {kept}"]
                lines.append(f"| {win}, {kept} | {r['s']:.2f} | {r['s'] / base:.2f} | {r['state_bytes'] / 1e6:.1f} |")
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
