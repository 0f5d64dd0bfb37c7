"""digits: tidemill's multilayer perceptron against scikit-learn's
MLPClassifier with the same settings on the same split, and against
tidemill's linear softmax (docs/neural.md).

The split: rows whose index is a multiple of 5 are the test rows (360), the
others train (1,437). Both networks: one hidden layer of 64 ReLU units,
softmax output, Adam (rate 1e-3, batch 128, β 0.9/0.999, ε 1e-8), 60
epochs, no early stopping, inputs standardised with the training rows'
mean and deviation, and scikit-learn's `alpha = 1e-4`. scikit-learn's Adam
adds `alpha / (2 b) ‖W‖²` to each mini-batch's mean loss, `b` the batch's
rows (its `_backprop` divides by the rows it is given), so the same step is
tidemill's `l2 = alpha / b` (`alpha / n`, with `n` the training rows, is
the equivalent only for its full-batch L-BFGS solver); neither penalises
biases. Each is
run with SEEDS (env, default 3) seeds; the linear softmax is L-BFGS with
`l2 = 1e-3` (pipelines/digits.toml's).

Usage: python benches/neural_digits.py DIGITS_PARQUET OUT_DIR
Prints one JSON object: per model the test accuracies, their mean, and the
wall seconds of a run (training only for scikit-learn, the whole process
for tidemill). Needs pyarrow and scikit-learn.
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

BIN = os.path.abspath(os.environ.get("TIDEMILL_BIN", "target/release/tidemill"))
SEEDS = int(os.environ.get("SEEDS", "3"))
EPOCHS = int(os.environ.get("EPOCHS", "60"))
HIDDEN = 64
ALPHA = 1e-4

PIPELINE = """
[data]
train = "{train}"
validation = {{ path = "{test}" }}
label = "target"
standardize = true
partition = "shuffle"
seed = {seed}

[model]
kind = "mlp"
head = "softmax"
hidden = [{hidden}]
activation = "relu"
l2 = {l2!r}

[optimizer]
kind = "adam"
learning_rate = 0.001
batch_size = 128

[train]
epochs = {epochs}

[output]
model = "{out}/mlp-{seed}.json"
"""

LINEAR = """
[data]
train = "{train}"
validation = {{ path = "{test}" }}
label = "target"
standardize = true

[model]
kind = "softmax"
l2 = 0.001

[optimizer]
kind = "lbfgs"

[train]
epochs = 200

[output]
model = "{out}/softmax.json"
"""


def tidemill(pipeline_text, path):
    with open(path, "w") as f:
        f.write(pipeline_text)
    t0 = time.perf_counter()
    p = subprocess.run([BIN, "--log", "warn", "train", path], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"tidemill train {path} failed ({p.returncode}): {p.stderr[-2000:]}")
    summary = json.loads(p.stdout)
    return summary["validation"]["accuracy"], wall


def main():
    digits, out = sys.argv[1], os.path.abspath(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    table = pq.read_table(digits)
    index = np.arange(table.num_rows)
    test_rows, train_rows = index[index % 5 == 0], index[index % 5 != 0]
    train_path, test_path = f"{out}/train.parquet", f"{out}/test.parquet"
    pq.write_table(table.take(pa.array(train_rows)), train_path)
    pq.write_table(table.take(pa.array(test_rows)), test_path)

    features = [c for c in table.column_names if c != "target"]
    x = np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in features])
    y = table.column("target").to_numpy()
    x_train, x_test = x[train_rows], x[test_rows]
    # Standardised as tidemill does: the training rows' mean and (population)
    # deviation; a constant column is left centred.
    mean, sd = x_train.mean(axis=0), x_train.std(axis=0)
    sd[sd == 0] = 1.0
    x_train, x_test = (x_train - mean) / sd, (x_test - mean) / sd

    n = len(train_rows)
    results = {"split": {"train_rows": int(n), "test_rows": int(len(test_rows))}}
    sk, tm = [], []
    sk_wall, tm_wall = [], []
    for seed in range(SEEDS):
        clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", solver="adam",
                            alpha=ALPHA, batch_size=128, learning_rate_init=1e-3,
                            max_iter=EPOCHS, shuffle=True, random_state=seed, tol=0.0,
                            n_iter_no_change=EPOCHS + 1, early_stopping=False)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x_train, y[train_rows])
        sk_wall.append(time.perf_counter() - t0)
        sk.append(float((clf.predict(x_test) == y[test_rows]).mean()))
        text = PIPELINE.format(train=train_path, test=test_path, seed=seed, hidden=HIDDEN,
                               l2=ALPHA / 128, epochs=EPOCHS, out=out)
        acc, wall = tidemill(text, f"{out}/mlp-{seed}.toml")
        tm.append(acc)
        tm_wall.append(wall)
    lin, lin_wall = tidemill(LINEAR.format(train=train_path, test=test_path, out=out),
                             f"{out}/softmax.toml")
    results["sklearn_mlp"] = {"accuracy": sk, "mean": float(np.mean(sk)),
                              "seconds": float(np.median(sk_wall))}
    results["tidemill_mlp"] = {"accuracy": tm, "mean": float(np.mean(tm)),
                               "seconds": float(np.median(tm_wall))}
    results["tidemill_softmax"] = {"accuracy": [lin], "mean": lin, "seconds": lin_wall}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
