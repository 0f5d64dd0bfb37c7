"""Networks at scale (docs/neural.md): examples/s, time to scikit-learn's
accuracy and bytes exchanged per step, tidemill's multilayer perceptron on
1 and 2 workers, data parallel (allreduce) and model parallel (split by
hidden units), beside scikit-learn's MLPClassifier in the same run.

Data sets:
- digits (1,797 rows, 64 features, 10 classes; the split of
  benches/neural_digits.py): one hidden layer of 64 ReLU units, Adam 1e-3,
  batch 128, alpha 1e-4, EPOCHS_DIGITS (default 60) epochs;
- nonlinear (benches/gen_nonlinear.py: 1.2M training rows, 20 Gaussian
  features labelled by a random tanh teacher network; 200k test rows):
  hidden HIDDEN (default "64"), Adam 1e-3, batch 256, alpha 1e-7,
  EPOCHS (default 8) epochs.

scikit-learn's `alpha` is tidemill's `l2 = alpha / batch_size`: its Adam
penalises each mini-batch's mean loss by `alpha / (2 b) ‖W‖²`.

Every tidemill run validates on the test rows after each epoch; its epoch
records give the time to an accuracy (`elapsed_s`, which includes those
evaluations). scikit-learn trains one epoch per `fit` (warm_start) and is
scored after each, outside its clock. "Time to sklearn" is the first
epoch's elapsed time at which a run's test accuracy reaches 99% of
scikit-learn's final test accuracy (`null`: not within the epochs; one
seed each, so the last digits of the accuracies are noise: the 10-seed
comparison is benches/neural_digits.py).

Usage: python benches/neural.py OUT_DIR
Writes OUT_DIR/results.json and prints a Markdown table. Needs pyarrow,
numpy and scikit-learn; TIDEMILL_BIN (default target/release/tidemill).
"""

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("TIDEMILL_BIN", "target/release/tidemill"))
EPOCHS = int(os.environ.get("EPOCHS", "8"))
EPOCHS_DIGITS = int(os.environ.get("EPOCHS_DIGITS", "60"))
HIDDEN = [int(h) for h in os.environ.get("HIDDEN", "64").split(",")]

PIPELINE = """
[data]
train = "{train}"
validation = {{ path = "{test}" }}
label = "{label}"
standardize = true
partition = "shuffle"
seed = 1

[model]
kind = "mlp"
head = "{head}"
hidden = {hidden}
l2 = {l2!r}

[optimizer]
kind = "adam"
learning_rate = 0.001
batch_size = {batch}

[train]
epochs = {epochs}
strategy = "{strategy}"

[output]
model = "{out}/{tag}.json"
metrics = "{out}/{tag}.jsonl"
"""


def load(path, label):
    t = pq.read_table(path)
    cols = [c for c in t.column_names if c != label]
    x = np.column_stack([t.column(c).to_numpy().astype(np.float64) for c in cols])
    return x, t.column(label).to_numpy()


def sklearn_run(x_train, y_train, x_test, y_test, hidden, batch, alpha, epochs):
    mean, sd = x_train.mean(axis=0), x_train.std(axis=0)
    sd[sd == 0] = 1.0
    x_train, x_test = (x_train - mean) / sd, (x_test - mean) / sd
    clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), activation="relu", solver="adam",
                        alpha=alpha, batch_size=batch, learning_rate_init=1e-3, max_iter=1,
                        warm_start=True, shuffle=True, random_state=0, tol=0.0,
                        n_iter_no_change=10**6)
    clock, curve = 0.0, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x_train, y_train)
        clock += time.perf_counter() - t0
        curve.append((clock, float((clf.predict(x_test) == y_test).mean())))
    return {"curve": curve, "accuracy": curve[-1][1], "seconds": clock,
            "examples_per_s": len(x_train) * epochs / clock}


def tidemill_run(text, out, tag, workers):
    path = f"{out}/{tag}.toml"
    with open(path, "w") as f:
        f.write(text)
    t0 = time.perf_counter()
    p = subprocess.run([BIN, "--log", "warn", "train", path, "--workers", str(workers)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{tag} failed ({p.returncode}): {p.stderr[-2000:]}")
    summary = json.loads(p.stdout)
    records = [json.loads(line) for line in open(f"{out}/{tag}.jsonl")]
    train_rows = summary["train_rows"]
    last = records[-1]
    return {
        "curve": [(r["elapsed_s"], r["validation"]["accuracy"]) for r in records],
        "accuracy": last["validation"]["accuracy"],
        "seconds": last["elapsed_s"],
        "process_seconds": wall,
        "examples_per_s": train_rows * len(records) / last["elapsed_s"],
        "bytes_per_step": last["bytes_per_step"],
        "params_per_worker": summary["params_per_worker"],
    }


def time_to(curve, target):
    for t, acc in curve:
        if acc >= target:
            return t
    return None


def bench(name, train, test, label, head, hidden, batch, alpha, epochs, out):
    x_train, y_train = load(train, label)
    x_test, y_test = load(test, label)
    runs = {"sklearn": sklearn_run(x_train, y_train, x_test, y_test, hidden, batch, alpha,
                                   epochs)}
    n = len(x_train)
    for strategy, workers in [("allreduce", 1), ("allreduce", 2), ("model-parallel", 1),
                              ("model-parallel", 2)]:
        tag = f"{name}-{strategy}-{workers}"
        text = PIPELINE.format(train=train, test=test, label=label, head=head,
                               hidden=json.dumps(hidden), l2=alpha / batch, batch=batch,
                               epochs=epochs, strategy=strategy, out=out, tag=tag)
        runs[f"tidemill {strategy} x{workers}"] = tidemill_run(text, out, tag, workers)
    target = 0.99 * runs["sklearn"]["accuracy"]
    for r in runs.values():
        r["time_to_sklearn"] = time_to(r["curve"], target)
    return {"rows": n, "hidden": hidden, "epochs": epochs, "target": target, "runs": runs}


def hashed(out):
    """nycflights13's hashed columns (2^18 slots) into 32 ReLU units, 2
    epochs of Adam on 2 workers: data against model parallel (no
    scikit-learn run: it has no hashed inputs)."""
    pipeline = os.path.join(HERE, "..", "pipelines", "nycflights.toml")
    runs = {}
    for strategy in ["allreduce", "model-parallel"]:
        tag = f"nyc-{strategy}"
        cmd = ["/usr/bin/time", "-f", "%M", BIN, "--log", "warn", "train", pipeline,
               "--workers", "2", "--set", 'model.kind="mlp"', "--set", 'model.head="logistic"',
               "--set", "model.hidden=[32]", "--set", 'optimizer.kind="adam"', "--set",
               "optimizer.learning_rate=0.003", "--set", "train.epochs=2", "--set",
               f'train.strategy="{strategy}"', "--set", f'output.metrics="{out}/{tag}.jsonl"',
               "--set", f'output.model="{out}/{tag}.json"']
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{tag} failed: {p.stderr[-2000:]}")
        summary = json.loads(p.stdout)
        last = [json.loads(line) for line in open(f"{out}/{tag}.jsonl")][-1]
        runs[strategy] = {
            "seconds": last["elapsed_s"],
            "process_seconds": wall,
            "peak_rss_mib": int(p.stderr.strip().splitlines()[-1]) / 1024,
            "bytes_per_step": last["bytes_per_step"],
            "params_per_worker": summary["params_per_worker"],
            "validation_loss": summary["validation"]["loss"],
        }
    return runs


def traffic(out):
    """Bytes exchanged per step by each strategy: the nonlinear data,
    hidden HIDDEN, 1 epoch, 2 workers (model-average averages every 8
    steps)."""
    runs = {}
    for strategy, extra in [("allreduce", ""), ("param-server", ""),
                            ("model-average", "sync_every = 8"), ("model-parallel", "")]:
        tag = f"traffic-{strategy}"
        text = PIPELINE.format(train=f"{out}/nonlinear_train.parquet",
                               test=f"{out}/nonlinear_test.parquet", label="y", head="logistic",
                               hidden=json.dumps(HIDDEN), l2=1e-7 / 256, batch=256, epochs=1,
                               strategy=strategy, out=out, tag=tag)
        text = text.replace("[output]", f"{extra}\n\n[output]")
        r = tidemill_run(text, out, tag, 2)
        runs[strategy] = {"bytes_per_step": r["bytes_per_step"], "seconds": r["seconds"],
                          "accuracy": r["accuracy"]}
    return runs


def main():
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)
    results = {}
    # digits: the split of neural_digits.py.
    digits = pq.read_table(os.path.join(HERE, "..", "datasets", "digits.parquet"))
    index = np.arange(digits.num_rows)
    pq.write_table(digits.take(pa.array(index[index % 5 != 0])), f"{out}/digits_train.parquet")
    pq.write_table(digits.take(pa.array(index[index % 5 == 0])), f"{out}/digits_test.parquet")
    results["digits"] = bench("digits", f"{out}/digits_train.parquet",
                              f"{out}/digits_test.parquet", "target", "softmax", [64], 128,
                              1e-4, EPOCHS_DIGITS, out)
    if not os.path.exists(f"{out}/nonlinear_train.parquet"):
        subprocess.run([sys.executable, os.path.join(HERE, "gen_nonlinear.py"), out],
                       check=True, stdout=subprocess.DEVNULL)
    results["nonlinear"] = bench("nonlinear", f"{out}/nonlinear_train.parquet",
                                 f"{out}/nonlinear_test.parquet", "y", "logistic", HIDDEN, 256,
                                 1e-7, EPOCHS, out)
    results["hashed"] = hashed(out)
    results["traffic"] = traffic(out)
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f, indent=1)
    for name, r in results.items():
        if name in ("hashed", "traffic"):
            continue
        print(f"\n{name}: {r['rows']} training rows, hidden {r['hidden']}, {r['epochs']} epochs, "
              f"target (99% of scikit-learn's accuracy) {r['target']:.4f}\n")
        print("| run | test accuracy | train s | examples/s | time to sklearn (s) | bytes/step |")
        print("|---|---|---|---|---|---|")
        for k, v in r["runs"].items():
            tts = "-" if v["time_to_sklearn"] is None else f"{v['time_to_sklearn']:.2f}"
            bps = v.get("bytes_per_step")
            print(f"| {k} | {v['accuracy']:.4f} | {v['seconds']:.2f} | "
                  f"{v['examples_per_s']:,.0f} | {tts} | "
                  f"{'-' if bps is None else f'{bps:,.0f}'} |")

    print(f"\nbytes per step, nonlinear, hidden {HIDDEN}, 1 epoch, 2 workers\n")
    print("| strategy | bytes/step | train s | test accuracy |")
    print("|---|---|---|---|")
    for k, v in results["traffic"].items():
        print(f"| {k} | {v['bytes_per_step']:,.0f} | {v['seconds']:.2f} | {v['accuracy']:.4f} |")
    print("\nnycflights13, 2^18 hashed slots into hidden [32], 2 epochs, 2 workers\n")
    print("| strategy | train s | peak RSS MiB | bytes/step | params per worker | validation loss |")
    print("|---|---|---|---|---|---|")
    for k, v in results["hashed"].items():
        print(f"| {k} | {v['seconds']:.2f} | {v['peak_rss_mib']:,.0f} | {v['bytes_per_step']:,.0f} | "
              f"{v['params_per_worker']} | {v['validation_loss']:.12f} |")


if __name__ == "__main__":
    main()

