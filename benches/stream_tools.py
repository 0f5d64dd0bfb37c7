#!/usr/bin/env python3
"""Helpers of benches/stream.sh (run with the peers' venv: pyarrow, numpy).

    stream_tools.py prep W BENCH_DATA          # the inputs sections 3 and 4 read, into W
    stream_tools.py run OUT.jsonl W SECTION NAME REP CMD
        # runs CMD (bash -c, from the repository root), appends one JSON line:
        # wall seconds, peak RSS (wait4 ru_maxrss: the largest single process of
        # the tree, what /usr/bin/time -v calls "Maximum resident set size"),
        # CMD's stdout as JSON (tidemill's summary, a peers.py line), files' sizes
    stream_tools.py produce FILE RATE ROWS BATCH LOG   # paced IPC stream on stdout
    stream_tools.py latency OUT.jsonl W MODE RATE ROWS BATCH_ROWS
    stream_tools.py report OUT.jsonl SUMMARY.md
"""
import glob
import json
import os
import statistics
import subprocess
import sys
import time

NYC = "datasets/nycflights13.parquet"


def shown(cmd, w):
    """CMD as the summary shows it: the scratch directory as $W, paths
    relative to the repository root (the working directory)."""
    return cmd.replace(w, "$W").replace(os.getcwd() + "/", "")


def append(out, rec):
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")


def parse_json(text):
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def timed(cmd, stdout_path, stderr_path):
    """Runs bash -c CMD; returns (wall seconds, exit code, ru_maxrss MiB)."""
    with open(stdout_path, "w") as fo, open(stderr_path, "w") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(["bash", "-c", cmd], stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    return wall, os.waitstatus_to_exitcode(status), ru.ru_maxrss / 1024.0


# --------------------------------------------------------------------------- prep
def prep(w, data):
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    def stream_file(path, tables, batch):
        with pa.OSFile(path, "wb") as sink:
            with ipc.new_stream(sink, tables[0].schema) as wr:
                for t in tables:
                    for b in t.to_batches(max_chunksize=batch):
                        wr.write_batch(b)

    dense = pq.read_table(os.path.join(data, "dense_train.parquet"))
    one_m = dense.slice(0, 1_000_000)
    pq.write_table(one_m, os.path.join(w, "w1_1m.parquet"), row_group_size=62_500)
    stream_file(os.path.join(w, "w1_1m.arrows"), [one_m], 62_500)
    stream_file(os.path.join(w, "w1_4m.arrows"), [dense], 62_500)
    del dense, one_m
    nyc = pq.read_table(NYC)
    pq.write_table(nyc.slice(0, 4096), os.path.join(w, "nyc_4k.parquet"))  # fixed costs: one batch
    stream_file(os.path.join(w, "nyc_x1.arrows"), [nyc], 16_384)
    stream_file(os.path.join(w, "nyc_x4.arrows"), [nyc] * 4, 16_384)
    d = os.path.join(w, "nyc_x4")
    os.makedirs(d, exist_ok=True)
    for i in range(4):  # a replay directory: the same file four times
        os.symlink(os.path.abspath(NYC), os.path.join(d, f"part-{i}.parquet"))
    # Section 4: the first rows in small record batches, so that --rate
    # releases them 256 at a time (a replay is paced per record batch).
    with pa.OSFile(os.path.join(w, "nyc_b256.arrow"), "wb") as sink:
        with ipc.new_file(sink, nyc.schema) as wr:
            for b in nyc.slice(0, 200_000).to_batches(max_chunksize=256):
                wr.write_batch(b)


# --------------------------------------------------------------------------- run
def run(out, w, section, name, rep, cmd, extra="{}"):
    so, se = os.path.join(w, "last.out"), os.path.join(w, "last.err")
    done = os.path.join(w, "producer_done")
    if os.path.exists(done):
        os.remove(done)
    t_launch = time.time()
    wall, rc, rss = timed(cmd, so, se)
    with open(so) as fh:
        text = fh.read()
    rec = dict(section=section, name=name, rep=int(rep), cmd=shown(cmd, w), wall_s=wall, rc=rc,
               maxrss_mb=rss, out=parse_json(text))
    rec.update(json.loads(extra))
    if rc != 0:
        with open(se) as fh:
            rec["stderr_tail"] = fh.read()[-800:]
    for key, pattern in (("model_bytes", "model.json"), ("ckpt", "ck/*")):
        files = sorted(glob.glob(os.path.join(w, pattern)))
        if files:
            rec[key + "_files"] = len(files)
            rec[key + "_max_bytes"] = max(os.path.getsize(p) for p in files)
            if key == "ckpt":
                rec["ckpt_sizes"] = [os.path.getsize(p) for p in files]
    if os.path.exists(done):  # a producer wrote its end time (date +%s.%N) there
        with open(done) as fh:
            rec["producer_done_s"] = float(fh.read()) - t_launch
    append(out, rec)
    status = "ok" if rc == 0 else f"FAILED rc={rc}"
    print(f"  [{section}] {name} rep {rep}: {wall:.2f} s, {rss:.0f} MiB, {status}", flush=True)


# --------------------------------------------------------------------------- section 4
def produce(path, rate, rows, batch, log):
    """Writes the first ROWS rows of PATH as an Arrow IPC stream on stdout,
    BATCH rows a record batch, batch k released at k*BATCH/RATE seconds;
    logs each release (first row, rows, the due time, the wall time just
    before the write: later than due when the pipe was full)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq
    rate, rows, batch = float(rate), int(rows), int(batch)
    t = pq.read_table(path).slice(0, rows)
    batches = t.to_batches(max_chunksize=batch)
    sink = pa.PythonFile(sys.stdout.buffer, mode="w")
    lines = []
    with ipc.new_stream(sink, t.schema) as wr:
        t0 = time.time()
        sent = 0
        for b in batches:
            due = t0 + sent / rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
            lines.append(f"{sent} {b.num_rows} {due:.6f} {time.time():.6f}")
            wr.write_batch(b)
            sys.stdout.buffer.flush()
            sent += b.num_rows
    sys.stdout.buffer.flush()
    with open(log, "w") as f:
        f.write("\n".join(lines) + "\n")


def latency(out, w, mode, rate, rows, batch_rows):
    """Section 4: one paced stream with a snapshot every batch; the wall time
    at which each snapshot (the model file, renamed into place) is first
    seen by a poller (stat every 0.5 ms; on a new file, its `stream.rows`),
    against the time each row was released to tidemill."""
    import re
    import numpy as np
    rate, rows, batch_rows = float(rate), int(rows), int(batch_rows)
    model, log = (os.path.join(w, f) for f in ("lat-model.json", "lat-release.log"))
    for f in (model, log):
        if os.path.exists(f):
            os.remove(f)
    common = f"--log warn --set stream.batch_rows={batch_rows} --set stream.snapshot_every=1 --model-out {model}"
    py = sys.executable
    if mode == "stdin":
        cmd = (f"{py} benches/stream_tools.py produce {NYC} {rate:.0f} {rows} 256 {log} | "
               f"target/release/tidemill stream benches/stream_nyc.toml --input - {common}")
    else:
        cmd = (f"target/release/tidemill stream benches/stream_nyc.toml --input {w}/nyc_b256.arrow "
               f"--rate {rate:.0f} {common}")
        assert rows == 200_000, "nyc_b256.arrow holds 200k rows"
    stamp = re.compile(rb'"stream"\s*:\s*\{[^}]*"rows"\s*:\s*(\d+)')
    seen = []  # (wall time first seen, rows of the snapshot)
    last_id = None
    with open(os.path.join(w, "lat.out"), "w") as fo, open(os.path.join(w, "lat.err"), "w") as fe:
        t_launch = time.time()
        p = subprocess.Popen(["bash", "-c", cmd], stdout=fo, stderr=fe)
        while p.poll() is None:
            try:
                st = os.stat(model)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino, st.st_mtime_ns, st.st_size) != last_id:
                now = time.time()
                last_id = (st.st_ino, st.st_mtime_ns, st.st_size)
                try:
                    with open(model, "rb") as fh:
                        fh.seek(max(0, st.st_size - 4096))
                        m = stamp.search(fh.read())
                except FileNotFoundError:
                    m = None
                if m:
                    seen.append((now, int(m.group(1))))
            time.sleep(0.0005)
    rc = p.returncode
    # Release time of each row (per record batch of 256).
    if mode == "stdin":
        rel = np.loadtxt(log, ndmin=2)
        firsts, counts, times = rel[:, 0].astype(np.int64), rel[:, 1].astype(np.int64), rel[:, 2]
        behind_ms = float(np.max(rel[:, 3] - rel[:, 2]) * 1000.0)
        origin = ("the producer's schedule (its start + rows before / rate); its writes were at most "
                  f"{behind_ms:.1f} ms behind it (a full pipe holds the producer back)")
    else:
        firsts = np.arange(0, rows, 256, dtype=np.int64)
        counts = np.minimum(256, rows - firsts)
        times = t_launch + firsts / rate
        behind_ms = None
        origin = ("the pacing schedule, counted from the launch of the process (the pacer starts a few ms "
                  "later, so these latencies include that start-up: an upper bound)")
    row_time = np.repeat(times, counts)
    snaps = []  # keep the first sighting of each row count
    for t, r in seen:
        if not snaps or r > snaps[-1][1]:
            snaps.append((t, r))
    last_lat, row_lat, start_lat, prev = [], [], [], 0
    warm = 1.0  # s: batches completed in the first second (start-up) are reported apart
    for t, hi in snaps:
        arrive = row_time[prev:hi]
        if len(arrive) and arrive[-1] - times[0] >= warm:
            last_lat.append(t - arrive[-1])
            row_lat.extend((t - arrive).tolist())
        elif len(arrive):
            start_lat.append(t - arrive[-1])
        prev = hi
    pct = lambda a, q: float(np.percentile(np.asarray(a) * 1000.0, q)) if len(a) else None
    rec = dict(section="latency", mode=mode, rate=rate, rows=rows, batch_rows=batch_rows, rc=rc, cmd=shown(cmd, w),
               snapshots_seen=len(snaps), expected_snapshots=-(-rows // batch_rows), measured_batches=len(last_lat),
               origin=origin, producer_behind_ms=behind_ms,
               last_row_ms_p50=pct(last_lat, 50), last_row_ms_p90=pct(last_lat, 90), last_row_ms_max=pct(last_lat, 100),
               row_ms_p50=pct(row_lat, 50), row_ms_p90=pct(row_lat, 90),
               startup_last_row_ms_max=pct(start_lat, 100),
               last_row_ms_series=[round(x * 1000.0, 1) for x in start_lat + last_lat],
               stream_seconds=(snaps[-1][0] - times[0]) if snaps else None,
               schedule_seconds=rows / rate)
    if rc != 0:
        with open(os.path.join(w, "lat.err")) as f:
            rec["stderr_tail"] = f.read()[-800:]
    append(out, rec)
    print(f"  [latency] {mode} batch_rows={batch_rows}: last row p50 {rec['last_row_ms_p50']} ms, "
          f"p90 {rec['last_row_ms_p90']} ms, rc={rc}", flush=True)


# --------------------------------------------------------------------------- report
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f(x, nd=2):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def report(path, md):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    meta = next((r for r in recs if r.get("section") == "meta"), {})
    by = {}
    for r in recs:
        if "name" in r:
            by.setdefault((r["section"], r["name"]), []).append(r)
    L = []
    p = L.append

    def runs(sec, name):
        return [r for r in by.get((sec, name), []) if r.get("rc") == 0 and r.get("out")]

    def failed(sec, name):
        return [r for r in by.get((sec, name), []) if r.get("rc") != 0 or not r.get("out")]

    def cmd(sec, name):
        rs = by.get((sec, name), [])
        return rs[0]["cmd"] if rs else "—"

    def tm(sec, name):
        rs = runs(sec, name)
        if not rs:
            return None
        o = rs[0]["out"]
        rows = o["rows"]
        wall = med([r["wall_s"] for r in rs])
        return dict(rows=rows, wall=wall, rps_wall=rows / wall, rps=med([r["out"]["rows_per_second"] for r in rs]),
                    loss=o["progressive"]["loss"], auc=o["progressive"].get("auc"), rss=med([r["maxrss_mb"] for r in rs]),
                    n=len(rs), walls=[round(r["wall_s"], 2) for r in rs], snaps=o.get("snapshots"),
                    identical=len({json.dumps(r["out"]["progressive"]) for r in rs}) == 1)

    def peer(sec, name):
        rs = runs(sec, name)
        if not rs:
            return None
        o = rs[0]["out"]
        wall = med([r["out"]["wall_s"] for r in rs])
        return dict(rows=o["rows"], wall=wall, rps_wall=o["rows"] / wall, eps=med([r["out"]["examples_per_s"] for r in rs]),
                    train_s=med([r["out"]["train_s"] for r in rs]), loss=o["test_logloss"], auc=o["test_auc"],
                    rss=med([r["out"]["peak_rss_mb"] for r in rs]), n=len(rs), walls=[round(r["out"]["wall_s"], 2) for r in rs],
                    out=o)

    p("# tidemill stream: benchmarks")
    p("")
    p(f"{meta.get('date', '?')}, {meta.get('cpu', '?')}, {meta.get('ncpu', '?')} cores, {meta.get('mem_gib', '?')} GiB, "
      f"tidemill {meta.get('commit', '?')}; peers: vowpalwabbit {meta.get('vowpalwabbit', '?')}, river {meta.get('river', '?')}, "
      f"pyarrow {meta.get('pyarrow', '?')} (benches/peers/setup.sh pins). Whole run: {f(meta.get('total_s'), 0)} s.")
    p("")
    p("Produced by `bash benches/stream.sh` (REPS=%s). The machine is shared and noisy: every speed below is "
      "compared only with figures **from the same run**, as ratios of medians over interleaved repetitions. "
      "`$W` is the script's scratch directory. Peak RSS is `wait4`'s `ru_maxrss` of the command's process tree "
      "(its largest process, what `/usr/bin/time -v` reports as \"Maximum resident set size\"); the peers' is "
      "peers.py's own (`peak_rss_mb`)." % meta.get("reps", "?"))
    p("")

    # ---------------------------------------------------------------- 1
    p("## 1. nycflights13 stream against Vowpal Wabbit and River")
    p("")
    p("327,346 flights of 2013 in file order (= time order), label `late15`; every row scored before it is "
      "trained on (progressive validation). tidemill: `benches/stream_nyc.toml` (SGD, constant rate 2.0, "
      "64 rows a step, 4096-row batches, hash_bits 22), replayed as fast as it goes; the model snapshot written "
      "only at the end (`stream.snapshot_every=1000000`) unless the row says otherwise (section 5 has the cost "
      "of a snapshot per batch). Peers: `peers.py nyc-vw-stream` (one pass, `-b 22`, VW's default adaptive/"
      "normalized/invariant updates) and `peers.py nyc-river-stream` (`LogisticRegression(SGD(0.01))`), one run "
      "per repetition, interleaved with tidemill's.")
    p("")
    p("| run | rows | wall s (median) | rows / wall s | summary `rows_per_second` / VW-River `examples_per_s` | "
      "progressive log loss | progressive AUC | peak RSS MiB | walls |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    vw, rv = peer("nyc", "vw"), peer("nyc", "river")
    rows_tm = {}
    for name, label in (("tm-w1", "tidemill, 1 worker"), ("tm-w2", "tidemill, 2 workers"),
                        ("tm-w1-snap", "tidemill, 1 worker, a snapshot every batch (`snapshot_every = 1`)"),
                        ("tm-w1-fast", "tidemill, 1 worker, 256 rows a step, rate 4")):
        t = tm("nyc", name)
        rows_tm[name] = t
        if t:
            p(f"| {label} | {t['rows']:,} | {f(t['wall'])} | {f(t['rps_wall'])} | {f(t['rps'])} | {t['loss']:.4f} | "
              f"{t['auc']:.4f} | {f(t['rss'], 0)} | {t['walls']} |")
        elif failed("nyc", name):
            p(f"| {label} | failed: {failed('nyc', name)[0].get('stderr_tail', '')[-200:]!r} | | | | | | | |")
    for t, label in ((vw, "Vowpal Wabbit (nyc-vw-stream)"), (rv, "River (nyc-river-stream)")):
        if t:
            p(f"| {label} | {t['rows']:,} | {f(t['wall'])} | {f(t['rps_wall'])} | {f(t['eps'])} (train_s {f(t['train_s'])}) | "
              f"{t['loss']:.4f} | {t['auc']:.4f} | {f(t['rss'], 0)} | {t['walls']} |")
    for name in ("vw", "river"):
        for r in failed("nyc", name):
            p(f"| {name} failed (rep {r['rep']}) | {r.get('stderr_tail', '')[-300:]!r} | | | | | | | |")
    p("")
    t1 = rows_tm.get("tm-w1")
    if t1 and vw:
        r_sum = t1["rps"] / vw["eps"]
        r_wall = t1["rps_wall"] / vw["rps_wall"]
        dl = t1["loss"] - vw["loss"]
        met = r_sum >= 2.0 and dl <= 0
        p(f"**Target (≥ 2× VW's examples/s at a progressive log loss no worse than VW's): "
          f"{'met' if met else 'NOT met'}.** tidemill on 1 worker: {r_sum:.2f}× VW's `examples_per_s` "
          f"(tidemill's `rows_per_second`, whole run after argument parsing, against VW's rows / train_s, which leaves out "
          f"reading Parquet and writing VW text), {r_wall:.2f}× VW's rows per wall second (both whole processes), "
          f"at a progressive log loss {dl:+.4f} against VW's ({t1['loss']:.4f} vs {vw['loss']:.4f}; AUC "
          f"{t1['auc']:.4f} vs {vw['auc']:.4f}).")
        t2 = rows_tm.get("tm-w2")
        if t2:
            p(f"On 2 workers: {t2['rps'] / vw['eps']:.2f}× VW's `examples_per_s`, {t2['rps_wall'] / vw['rps_wall']:.2f}× its "
              f"rows per wall second; 2 workers / 1 worker = {t2['rps'] / t1['rps']:.2f} (same model and metrics, bit for "
              f"bit: {'yes' if abs(t2['loss'] - t1['loss']) == 0 else 'NO'}).")
        ts = rows_tm.get("tm-w1-snap")
        if ts:
            r_snap = ts['rps'] / vw['eps']
            p(f"With a snapshot every batch (`snapshot_every = 1`, {ts['snaps']} snapshots, each fsynced; the default is one a second): {r_snap:.2f}× VW's "
              f"`examples_per_s`: the target is {'met' if r_snap >= 2 else 'not met'} in that configuration.")
        tf = rows_tm.get("tm-w1-fast")
        if tf:
            r_fast = tf["rps"] / vw["eps"]
            ok_fast = r_fast >= 2.0 and tf["loss"] <= vw["loss"]
            p(f"With 256 rows a step (rate 4: fewer, larger steps; from the sweep of 1b, the fastest setting whose log "
              f"loss stays below VW's): {r_fast:.2f}× VW's `examples_per_s`, {tf['rps_wall'] / vw['rps_wall']:.2f}× its "
              f"rows per wall second, log loss {tf['loss']:.4f} ({tf['loss'] - vw['loss']:+.4f}): the target is "
              f"{'met' if ok_fast else 'not met'} with it.")
        if rv:
            p(f"Against River: tidemill 1 worker {t1['rps'] / rv['eps']:.2f}× River's `examples_per_s`, "
              f"{t1['rps_wall'] / rv['rps_wall']:.2f}× its rows per wall second, log loss {t1['loss'] - rv['loss']:+.4f}.")
    fixed_runs = runs("nyc", "tm-fixed")
    fixed = sorted(fixed_runs, key=lambda r: r["out"]["seconds"])[len(fixed_runs) // 2] if fixed_runs else None
    p("")
    p("Notes:")
    p("- Features: the peers use carrier, origin, dest, tailnum, hour **and the origin_dest pair** as tokens, plus "
      "`log1p(distance)`. tidemill has no feature crosses and no log transform: it hashes carrier, tailnum, origin, "
      "dest, hour and takes distance standardized by running moments (`data.standardize`, exact moments of every "
      "row so far). tidemill's model therefore lacks the pair, which the peers have.")
    p("- Schedules: tidemill and River use a constant rate; VW's default AdaGrad-style rate decays, which the "
      "drifting daily late rate punishes (benches/peers/README.md: VW with `--sgd -l 0.01 --power_t 0` matches River). "
      "VW's log loss is its default configuration, as peers.py runs it; no VW tuning was done here.")
    p("- Noise: VW runs a parser thread beside its learner and so uses both cores; tidemill on 1 worker uses one "
      "(plus its source's reader thread). When the other core is busy (this machine is shared), VW's figure drops "
      "more than tidemill's, so the ratio moves from run to run of this script, and a quieter machine favours VW. "
      + (f"tidemill's `rows_per_second` also holds its fixed costs: a one-batch stream (the first 4096 rows) "
         f"takes {fixed['out']['seconds']:.2f} s (median), mostly setting up and finally writing the 2^22-slot "
         f"model, {fixed['out']['seconds'] / t1['wall']:.0%} of the whole stream's wall time." if fixed and t1 else ""))
    p("- The progressive metrics of tidemill are computed by tidemill over every row (scored before the step that "
      "trains on it: a row is scored by the model as of the previous 64-row step); the peers' by peers.py from "
      "their per-row predictions.")
    p("")
    # ---------------------------------------------------------------- 1b
    sweep = [r for r in recs if r.get("section") == "sweep"]
    if sweep:
        p("### 1b. How the nyc optimizer settings were chosen")
        p("")
        p("One run each, 1 worker, the same data and features: benches/stream_nyc.toml with the row's `--set`s. "
          "The log loss and AUC are deterministic; the rows/s are single runs on a shared machine (indicative only). "
          "Chosen: SGD, constant rate 2.0, 64 rows a step (the file's settings): the lowest progressive log loss "
          "of the sweep. FTRL comes close at a higher rate (α = 3–5); AdaGrad's per-coordinate decay does worse "
          "here, as VW's does.")
        p("")
        p("| optimizer | rate | rows a step | progressive log loss | AUC | summary rows/s |")
        p("|---|---:|---:|---:|---:|---:|")
        for r in sweep:
            o = r.get("out")
            kind, rate, step = (r["name"].split(",") + ["", "", ""])[:3]
            if r.get("rc") == 0 and o:
                p(f"| {kind} | {rate} | {step} | {o['progressive']['loss']:.4f} | {o['progressive']['auc']:.4f} | "
                  f"{f(o['rows_per_second'])} |")
            else:
                p(f"| {kind} | {rate} | {step} | failed | | |")
        p("")
        p(f"Command of the first row: `{sweep[0]['cmd']}`; the others differ in their `--set`s.")
        p("")

    # ---------------------------------------------------------------- 2
    p("## 2. W1 dense stream (4M × 32, logistic)")
    p("")
    p("tidemill replays `dense_train.parquet` (4M rows, 64 row groups of 62,500) with benches/stream_w1.toml "
      "(AdaGrad 0.1, 256 rows a step, inverse_sqrt decay 0.01; 4096-row batches), the final snapshot only. "
      "VW: `peers.py w1-vw-stream`, one pass over the same rows in the same order (`-b 18`, VW's defaults), "
      "each row predicted before it is learnt (`-p`): progressive, as tidemill's. "
      "River has no W1 stream workload in peers.py: `w1-river` trains `learn_one` over the first 200k rows "
      "and then scores the 200k-row test file (not progressive). It is cheap, so it is here, with tidemill's "
      "progressive log loss over its first rows beside it (from the `--metrics-out` run of 5b).")
    p("")
    p("| run | rows | wall s (median) | rows / wall s | summary `rows_per_second` / peer `examples_per_s` | log loss | AUC | peak RSS MiB | walls |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    w1s = {}
    for name, label in (("tm-w1", "tidemill, 1 worker (progressive, 4M rows)"),
                        ("tm-w2", "tidemill, 2 workers (progressive, 4M rows)")):
        t = tm("w1", name)
        w1s[name] = t
        if t:
            p(f"| {label} | {t['rows']:,} | {f(t['wall'])} | {f(t['rps_wall'])} | {f(t['rps'])} | {t['loss']:.4f} | "
              f"{t['auc']:.4f} | {f(t['rss'], 0)} | {t['walls']} |")
    wv = peer("w1", "vw")
    if wv:
        p(f"| Vowpal Wabbit w1-vw-stream (progressive, 4M rows) | {wv['rows']:,} | {f(wv['wall'])} | {f(wv['rps_wall'])} | "
          f"{f(wv['eps'])} (train_s {f(wv['train_s'])}) | {wv['loss']:.4f} | {wv['auc']:.4f} | {f(wv['rss'], 0)} | {wv['walls']} |")
    early = meta.get("w1_progressive_200k")
    if early:
        auc = early.get("auc")
        auc = f"{auc:.4f}" if auc is not None else "—"
        p(f"| tidemill, progressive over its first {early['rows_total']:,} rows | | | | | {early['loss']:.4f} | "
          f"{auc} | | |")
    wr = peer("w1", "river")
    if wr:
        p(f"| River w1-river (200k rows; log loss on the test file) | {wr['rows']:,} | {f(wr['wall'])} | {f(wr['rps_wall'])} | "
          f"{f(wr['eps'])} (train_s {f(wr['train_s'])}) | {wr['loss']:.4f} | {wr['auc']:.4f} | {f(wr['rss'], 0)} | {wr['walls']} |")
    p("")
    t1 = w1s.get("tm-w1")
    if t1 and wv:
        met = t1["rps"] >= 2 * wv["eps"] and t1["loss"] <= wv["loss"]
        p(f"**Target (≥ 2× VW's examples/s at a progressive log loss no worse than VW's): {'met' if met else 'NOT met'}.** "
          f"tidemill on 1 worker: {t1['rps'] / wv['eps']:.2f}× VW's `examples_per_s` "
          f"({t1['rps_wall'] / wv['rps_wall']:.2f}× its rows per wall second, which counts VW's conversion to its text format), "
          f"at a progressive log loss {t1['loss'] - wv['loss']:+.4f} against VW's ({t1['loss']:.4f} vs {wv['loss']:.4f}; "
          f"AUC {t1['auc']:.4f} vs {wv['auc']:.4f}).")
    if t1 and wr:
        line = (f"Against River: {t1['rps'] / wr['eps']:.1f}× its examples/s "
                f"({t1['rps_wall'] / wr['rps_wall']:.1f}× its rows per wall second; River learns 200k rows, "
                f"tidemill streams 4M).")
        if w1s.get("tm-w2"):
            line += (f" 2 workers / 1 worker: {w1s['tm-w2']['rps'] / t1['rps']:.2f} "
                     f"(same metrics bit for bit: {'yes' if w1s['tm-w2']['loss'] == t1['loss'] else 'NO'}).")
        p(line)
    truth = meta.get("w1_bayes")
    if truth:
        p(f"Bayes log loss of the test set (dense_truth.json): {truth:.4f}.")
    p("")
    p(f"Commands: `{cmd('w1', 'tm-w1')}` (`-w 2` for 2 workers); `{cmd('w1', 'vw')}`; `{cmd('w1', 'river')}`.")
    p("")

    # ---------------------------------------------------------------- 2b
    p("### 2b. The four strategies on nycflights13")
    p("")
    p("benches/stream_nyc.toml replayed with each `train.strategy` (docs/streaming.md, Strategies), "
      "the final snapshot only. allreduce, param-server and model-parallel give the same model on 1 and 2 workers; "
      "model-average on 1 worker is allreduce, on 2 a model of its own.")
    p("")
    p("| strategy | workers | wall s (median) | summary `rows_per_second` | / allreduce on 1 worker | progressive log loss | AUC | walls |")
    p("|---|---:|---:|---:|---:|---:|---:|---|")
    base = tm("strategies", "allreduce w1")
    for s_name in ("allreduce", "param-server-2", "model-average", "model-parallel"):
        for w in (1, 2):
            t = tm("strategies", f"{s_name} w{w}")
            if not t:
                continue
            label = "param-server, staleness 2" if s_name == "param-server-2" else s_name
            ratio = f"{t['rps'] / base['rps']:.2f}" if base else "—"
            p(f"| {label} | {w} | {f(t['wall'])} | {f(t['rps'])} | {ratio} | {t['loss']:.4f} | {t['auc']:.4f} | {t['walls']} |")
    p("")
    p(f"Command (allreduce, 1 worker; the others differ in `-w` and the `--set`s): `{cmd('strategies', 'allreduce w1')}`.")
    p("")

    # ---------------------------------------------------------------- 3
    p("## 3. Peak RSS under a fast producer")
    p("")
    p("stdin: `cat` of a prepared Arrow IPC stream file (in the page cache; record batches of 62,500 rows for W1, "
      "16,384 for nyc) piped into `--input -`; replay: the same rows from Parquet (W1 4×: dense_train.parquet; "
      "nyc 4×: a directory of four links to the file). Each at 1× and 4× the input length, one run each, the final "
      "snapshot only. *producer done*: when `cat` exited, as a share of the run's wall time; a `cat` of a cached "
      "file is far faster than training, so it ends only when what is left fits the pipe and tidemill's buffers "
      "(the reader thread holds at most 2 record batches; the leader takes rows only to cut its next batch): backpressure works.")
    p("")
    p("| input | source | rows | wall s | rows / wall s | peak RSS MiB | producer done | command |")
    p("|---|---|---:|---:|---:|---:|---:|---|")
    rss_rows = [r for r in recs if r.get("section") == "rss"]
    for r in rss_rows:
        o = r.get("out") or {}
        frac = (f"{r['producer_done_s'] / r['wall_s']:.0%}" if r.get("producer_done_s") is not None else "—")
        if r.get("rc") == 0 and o:
            p(f"| {r['label']} | {r['source']} | {o['rows']:,} | {f(r['wall_s'])} | {f(o['rows'] / r['wall_s'])} | "
              f"{f(r['maxrss_mb'], 0)} | {frac} | `{r['cmd']}` |")
        else:
            p(f"| {r['label']} | {r['source']} | failed rc={r.get('rc')} | | | | | `{r['cmd']}` |")
    p("")
    pairs, order = {}, []
    for r in rss_rows:
        data, mult = r["label"].split(" ")
        key = (data, r["source"])
        if key not in order:
            order.append(key)
        pairs[key + (mult,)] = r
    for key in order:
        a, b = pairs.get(key + ("1×",)), pairs.get(key + ("4×",))
        if a and b and a.get("out") and b.get("out"):
            extra = (b["maxrss_mb"] - a["maxrss_mb"]) * 2**20 / (b["out"]["rows"] - a["out"]["rows"])
            p(f"- {key[0]}, {key[1]}: peak RSS at 4× / at 1× = {b['maxrss_mb'] / a['maxrss_mb']:.2f} "
              f"({extra:.0f} bytes per extra row)")
    p("")
    p("On stdin (a live source, which keeps no score per row) and on a replay with `stream.stream_auc = false`, "
      "peak RSS does not grow with the input: backpressure bounds the rows in flight, and nothing is kept per row. "
      "A replay by default keeps every row's (score, label) for the whole stream's exact progressive AUC in the "
      "summary (16 bytes a row, grown by doubling): that, and only that, grows with its length. (Before tidemill used mimalloc, glibc's malloc made "
      "stdin grow too: its mmap threshold rises to the largest block freed, so the record batches' multi-megabyte "
      "buffers came from the heap.)")
    p("")

    # ---------------------------------------------------------------- 4
    lat = [r for r in recs if r.get("section") == "latency"]
    p("## 4. Latency from a row's arrival to the snapshot that includes it")
    p("")
    p("nyc pipeline (hash_bits 22), a snapshot every batch (`snapshot_every = 1`), 50,000 rows/s, "
      "200,000 rows (4 s), no `--metrics-out` (see 5b). A snapshot *appears* when a poller (`stat` of the model file "
      "every 0.5 ms; on a new file, its `stream.rows`) first sees it. **stdin**: a Python producer writes "
      "256-row record batches into the pipe on a fixed schedule; a row's arrival is its scheduled time. "
      "**replay**: `--rate` over an Arrow IPC file of 256-row record batches (a replay is paced per record "
      "batch: over the Parquet file `--rate` would release its 16,384-row row groups at once); a row's arrival "
      "is the pacing schedule counted from the process launch, so these figures also hold the process "
      "start-up until the pacer starts (an upper bound). Batches completed in the first second of the "
      "schedule are left out of the percentiles and shown apart (*start-up*): rows are due before tidemill "
      "reads its first one (it takes about 0.2 s to start at hash_bits 22, see section 1's notes; the replay's "
      "pacer starts its clock as the source opens, and the stdin producer's writes block on the full pipe "
      "meanwhile), and that backlog drains only as fast as the stream's headroom over the rate allows. "
      f"{meta.get('reps', '?')} runs each, interleaved. "
      "*last row*: each batch's last row, the delay the stream adds once a batch is complete (training the "
      "batch + writing the snapshot); *any row*: every row, which also waits for its batch to fill "
      "(batch_rows / rate / 2 on average).")
    p("")
    p("| source | batch_rows | batch fill ms | snapshots seen / batches | last row p50 ms | last row p90 ms | last row max ms | any row p50 ms | any row p90 ms | start-up: last row max ms | last row p50 of each run |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    groups = []
    for r in lat:
        key = (r["mode"], r["batch_rows"])
        if key not in [g[0] for g in groups]:
            groups.append((key, []))
        next(g for g in groups if g[0] == key)[1].append(r)
    for (mode, br), rs in groups:
        bad = [r for r in rs if r.get("rc") != 0]
        ok = [r for r in rs if r.get("rc") == 0]
        if not ok:
            p(f"| {mode} | {br} | failed rc={bad[0]['rc']}: {bad[0].get('stderr_tail', '')[-200:]!r} | | | | | | | | |")
            continue
        m = lambda k: med([r.get(k) for r in ok])
        mx = lambda k: max(r.get(k) or 0.0 for r in ok)
        p(f"| {mode} | {br:,} | {1000 * br / ok[0]['rate']:.1f} | "
          f"{'/'.join(str(r['snapshots_seen']) for r in ok)} / {ok[0]['expected_snapshots']} | {f(m('last_row_ms_p50'), 1)} | "
          f"{f(m('last_row_ms_p90'), 1)} | {f(mx('last_row_ms_max'), 1)} | {f(m('row_ms_p50'), 1)} | {f(m('row_ms_p90'), 1)} | "
          f"{f(mx('startup_last_row_ms_max'), 1)} | {[round(r['last_row_ms_p50'], 1) for r in ok]} |")
    p("")
    p("p50 and p90: medians over the runs; max: the largest of any run. Each run's per-batch latencies are in "
      "runs.jsonl (`last_row_ms_series`).")
    p("")
    behind = [r["producer_behind_ms"] for r in lat if r.get("producer_behind_ms") is not None]
    if behind:
        p(f"The stdin producer's writes lagged its schedule by at most {max(behind):.0f} ms in any run (a write "
          "blocks while the pipe is full); latencies count from the schedule, so such waits are included.")
    if lat:
        p("")
        p("Commands: " + "; ".join(f"`{r['cmd']}`" for r in lat[:2]) + " (batch_rows varied).")
    p("")

    # ---------------------------------------------------------------- 5
    p("## 5. Snapshot cost")
    p("")
    p("The section-1 nyc stream (1 worker, hash_bits 22, 80 batches of 4096 rows) with a snapshot every batch "
      "against only the final one, with and without a checkpoint at every snapshot (`output.checkpoint`, the "
      "default keep). Medians of interleaved runs. A snapshot is the model's JSON written to a temporary file, "
      "fsynced and renamed into place; a checkpoint is the bincode stream state (`Saved`), fsynced.")
    p("")
    p("| snapshots | checkpoints | wall s (median) | ratio to final-only | snapshots | ms per extra snapshot | model file bytes | checkpoint file bytes | walls |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---|")
    base = tm("snap", "final")
    base_ck = tm("snap", "final-ck")
    for name, a, b in (("final", "final only", "no"), ("every", "every batch", "no"),
                       ("final-ck", "final only", "yes"), ("every-ck", "every batch", "yes")):
        t = tm("snap", name)
        if not t:
            continue
        rs = runs("snap", name)
        ref = base_ck if name == "every-ck" else base
        per = None
        if ref and name.startswith("every") and t["snaps"] > ref["snaps"]:
            per = 1000 * (t["wall"] - ref["wall"]) / (t["snaps"] - ref["snaps"])
        p(f"| {a} | {b} | {f(t['wall'])} | {f(t['wall'] / base['wall']) if base else '—'} | {t['snaps']} | {f(per, 1)} | "
          f"{f(med([r.get('model_bytes_max_bytes') for r in rs]))} | {f(med([r.get('ckpt_max_bytes') for r in rs]))} | {t['walls']} |")
    p("")
    ck = runs("snap", "every-ck")
    sizes = ck[0].get("ckpt_sizes") if ck else None
    if sizes and len(sizes) > 1:
        growth = (sizes[-1] - sizes[0]) / (len(sizes) - 1)
        p(f"The last {len(sizes)} checkpoints of a run change by {growth:,.0f} bytes a batch ({growth / 4096:.1f} bytes "
          "a row). The model is stored sparse (only the live slots of the 2^22), and the checkpoint keeps no "
          "per-row scores (the whole-stream AUC's scores live in memory only).")
        p("")
    p(f"Commands: `{cmd('snap', 'every')}`; with checkpoints add `--set output.checkpoint=$W/ck` "
      "(emptied before each run); final only: `--set stream.snapshot_every=1000000`.")
    p("")

    # ---------------------------------------------------------------- 5b
    mrows = [r for r in recs if r.get("section") == "metrics"]
    if mrows:
        p("### 5b. Cost of `--metrics-out`")
        p("")
        p("One run each, final snapshot only, with and without a metrics line per batch (batch, rolling and "
          "cumulative metrics; the cumulative line carries no AUC, which would need every score so far). "
          "A ratio that stays the same at 1× and 4× the input means the lines cost per batch, not per row so far.")
        p("")
        p("| input | rows | batches | wall s without | wall s with `--metrics-out` | ratio | command (with) |")
        p("|---|---:|---:|---:|---:|---:|---|")
        labels = []
        for r in mrows:
            if not r["name"].endswith("+metrics") and r["name"] not in labels:
                labels.append(r["name"])
        for lb in labels:
            a = runs("metrics", lb)
            b = runs("metrics", lb + " +metrics")
            if a and b:
                o = a[0]["out"]
                p(f"| {lb} | {o['rows']:,} | {o['batches']} | {f(a[0]['wall_s'])} | {f(b[0]['wall_s'])} | "
                  f"{b[0]['wall_s'] / a[0]['wall_s']:.1f} | `{b[0]['cmd']}` |")
        p("")

    with open(md, "w") as fh:
        fh.write("\n".join(L))


def meta(path, key, value):
    """Adds KEY = VALUE (JSON) to the run's meta record."""
    recs = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
    m = next((r for r in recs if r.get("section") == "meta"), None)
    if m is None:
        m = {"section": "meta"}
        recs.insert(0, m)
    m[key] = json.loads(value)
    with open(path, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in recs))


def main():
    a = sys.argv[1:]
    if a[0] == "prep":
        prep(a[1], a[2])
    elif a[0] == "run":
        run(*a[1:8])
    elif a[0] == "produce":
        produce(*a[1:6])
    elif a[0] == "latency":
        latency(*a[1:7])
    elif a[0] == "report":
        report(a[1], a[2])
    elif a[0] == "meta":
        meta(a[1], a[2], a[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
