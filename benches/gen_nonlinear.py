"""A generated non-linear binary data set for the network benchmarks
(docs/neural.md): a random "teacher" network labels Gaussian inputs.

numpy Generator seed 11, drawn in this order:
  A = standard_normal((20, 32)) * 0.5, a = standard_normal(32) * 0.5,
  B = standard_normal(32) / sqrt(32) * 6  (the teacher: z = tanh(x·A + a)·B)
  then per chunk of 100,000 rows: x = standard_normal((n, 20), float32),
  u = random(n); y = (u < sigmoid(z)) as int8.
12 train chunks (1,200,000 rows, one row group each, so that workers get
whole units) and 2 test chunks (200,000 rows). A linear model cannot
follow the teacher's tanh units; a network with enough units can reach
the Bayes accuracy the script prints (the teacher's own, on the test rows).

Usage: python benches/gen_nonlinear.py OUT_DIR
Writes OUT_DIR/nonlinear_train.parquet and nonlinear_test.parquet.
"""

import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

D, H, CHUNK = 20, 32, 100_000


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(11)
    A = rng.standard_normal((D, H)) * 0.5
    a = rng.standard_normal(H) * 0.5
    B = rng.standard_normal(H) / np.sqrt(H) * 6

    def chunk():
        x = rng.standard_normal((CHUNK, D), dtype=np.float32)
        z = np.tanh(x.astype(np.float64) @ A + a) @ B
        p = 1.0 / (1.0 + np.exp(-z))
        y = (rng.random(CHUNK) < p).astype(np.int8)
        cols = {f"x{j}": x[:, j] for j in range(D)}
        cols["y"] = y
        return pa.table(cols), p, y

    bayes = []
    for name, chunks in [("train", 12), ("test", 2)]:
        path = os.path.join(out, f"nonlinear_{name}.parquet")
        writer = None
        for _ in range(chunks):
            t, p, y = chunk()
            if name == "test":
                bayes.append(((p > 0.5) == (y == 1)).mean())
            if writer is None:
                writer = pq.ParquetWriter(path, t.schema, compression="zstd")
            writer.write_table(t, row_group_size=CHUNK)
        writer.close()
    print(json.dumps({"bayes_test_accuracy": float(np.mean(bayes))}))


if __name__ == "__main__":
    main()
