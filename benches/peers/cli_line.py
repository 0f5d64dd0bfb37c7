#!/usr/bin/env python3
"""One results line (the peers' format) for the `tidemill` binary's whole W1 job.

    python cli_line.py TIDEMILL DATA_DIR WORKERS EPOCHS     # REPS runs (default 3)

The job a user runs: `tidemill train benches/w1.toml` with the cache on, which
reads the Parquet file, scans it, trains, validates on the test file and
writes the model. Wall time and peak RSS (wait4's ru_maxrss) are the medians
of REPS runs, as the peers'; log loss and AUC are the run's validation on
the test file (the same 200,000 rows the peers are scored on).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

binary, data, workers, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
reps = max(1, int(os.environ.get("REPS", "3")))
runs = []
with tempfile.TemporaryDirectory() as out:
    for _ in range(reps):
        argv = [binary, "train", "benches/w1.toml", "-q", "-w", str(workers),
                "--set", f'data.train="{data}/dense_train.parquet"',
                "--set", f'data.validation={{ path = "{data}/dense_test.parquet" }}',
                "--set", "data.cache=true", "--set", f"train.epochs={epochs}",
                "--model-out", os.path.join(out, "model.json")]
        started = time.monotonic()
        child = subprocess.Popen(argv, stdout=subprocess.PIPE)
        summary = child.stdout.read()
        child.stdout.close()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            sys.exit(f"cli_line.py: {' '.join(argv)} exited with {child.returncode}")
        summary = json.loads(summary)
        if not summary.get("validation"):
            sys.exit("cli_line.py: the summary has no validation metrics (is train.eval_every above train.epochs?)")
        runs.append((wall, usage.ru_maxrss / 1024.0, summary))
wall = statistics.median(r[0] for r in runs)
rss = statistics.median(r[1] for r in runs)
summary = runs[0][2]
rows = summary["train_rows"]
print(json.dumps({
    "peer": f"tidemill-cli-w{workers}-e{epochs}", "workload": "W1-dense", "sub": "w1-tidemill-cli",
    "rows": rows, "epochs": epochs, "wall_s": wall, "load_s": None, "train_s": None, "job_s": summary["seconds"],
    "examples_per_s": rows * epochs / wall, "peak_rss_mb": rss,
    "test_logloss": summary["validation"]["loss"], "test_auc": summary["validation"]["auc"],
    "n_test": summary["validation"]["rows"], "runs": reps,
    "params": {"binary": binary, "workers": workers, "cache": True, "pipeline": "benches/w1.toml"},
}))
