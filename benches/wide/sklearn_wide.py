#!/usr/bin/env python3
"""scikit-learn's L-BFGS on the wide table (docs/benchmarks.md, "Wide L-BFGS").

    python3 benches/wide/sklearn_wide.py DATA_DIR [--max-iter 1000]

Reads DATA_DIR/train.parquet and test.parquet (benches/wide/gen_wide.py),
one-hot encodes the 28 string columns (unknown test values ignored),
standardises the 12 numeric ones and fits LogisticRegression(C=1, lbfgs):
the objective mean log loss + ||w||^2 / (2n), tidemill's l2 = 1/n. Prints
one JSON line: wall seconds (read, encode, fit, score), fit seconds (encoding included),
iterations, test log loss and AUC, peak RSS.
"""

import argparse
import json
import os
import resource
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--max-iter", type=int, default=1000)
    a = ap.parse_args()
    t0 = time.perf_counter()
    train = pq.read_table(os.path.join(a.data, "train.parquet"))
    test = pq.read_table(os.path.join(a.data, "test.parquet"))
    y, y_test = train["income"].to_numpy(), test["income"].to_numpy()
    strings = [f.name for f in train.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    numeric = [f.name for f in train.schema if f.name not in strings and f.name != "income"]

    def matrices(t):
        return (np.column_stack([np.asarray(t[c].to_pylist(), dtype=object) for c in strings]),
                np.column_stack([t[c].to_numpy().astype(np.float64) for c in numeric]))

    (s, x), (s_test, x_test) = matrices(train), matrices(test)
    t1 = time.perf_counter()
    onehot = OneHotEncoder(handle_unknown="ignore").fit(s)
    scale = StandardScaler().fit(x)

    def design(s, x):
        return sparse.hstack([onehot.transform(s), sparse.csr_matrix(scale.transform(x))]).tocsr()

    model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=a.max_iter).fit(design(s, x), y)
    t2 = time.perf_counter()
    p = model.predict_proba(design(s_test, x_test))[:, 1]
    wall = time.perf_counter() - t0
    print(json.dumps({
        "peer": "sklearn LogisticRegression (lbfgs)",
        "wall_s": round(wall, 3),
        "fit_s": round(t2 - t1, 3),
        "iterations": int(model.n_iter_[0]),
        "string_columns": len(strings),
        "numeric_columns": len(numeric),
        "test_log_loss": log_loss(y_test, p),
        "test_auc": roc_auc_score(y_test, p),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
