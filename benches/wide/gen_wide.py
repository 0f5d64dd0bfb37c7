#!/usr/bin/env python3
"""A census-like wide table for the L-BFGS benchmark (docs/benchmarks.md, "Wide L-BFGS").

    python3 benches/wide/gen_wide.py OUT_DIR [--copies 6] [--seed 11]

Built from the bundled `datasets/adult.parquet` (48,842 rows), repeated
`copies` times (default 6: 293,052 rows, 234,441 to train) and perturbed so that the copies are
not duplicates:

* 28 string columns: adult's 8 categorical columns and the 20 pairwise
  crosses (the first 20 pairs in order) "a|b" (education × occupation, ...); in every copy
  after the first, each string cell is replaced by a random value of its
  column with probability 0.05;
* 12 numeric columns: adult's 6 numeric columns with integer jitter in every
  copy after the first, and 6 derived columns (log1p of the capital columns,
  age², hours × age, education × hours, a noise column);
* label `income` (0/1).

Rows are shuffled, then split 80/20 into `train.parquet` (8 row groups) and
`test.parquet`. Deterministic for a seed. Needs numpy and pyarrow.
"""

import argparse
import itertools
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ADULT = os.path.join(HERE, "..", "..", "datasets", "adult.parquet")

CATEGORICAL = ["workclass", "education", "marital-status", "occupation",
               "relationship", "race", "gender", "native-country"]
NUMERIC = ["age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week"]
JITTER = {"age": 1, "fnlwgt": 500, "educational-num": 0, "capital-gain": 0, "capital-loss": 0,
          "hours-per-week": 2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    base = pq.read_table(ADULT)
    n = base.num_rows
    strings = {c: np.asarray(base[c].to_pylist(), dtype=object) for c in CATEGORICAL}
    nums = {c: np.asarray(base[c].to_numpy(), dtype=np.float64) for c in NUMERIC}
    label = (np.asarray(base["income"].to_pylist(), dtype=object) == ">50K").astype(np.int64)

    cols_s = {c: [] for c in CATEGORICAL}
    cols_n = {c: [] for c in NUMERIC}
    labels = []
    for copy in range(a.copies):
        for c in CATEGORICAL:
            v = strings[c].copy()
            if copy > 0:
                flip = rng.random(n) < 0.05
                v[flip] = rng.choice(strings[c], size=int(flip.sum()))
            cols_s[c].append(v)
        for c in NUMERIC:
            v = nums[c].copy()
            if copy > 0 and JITTER[c] > 0:
                v = np.maximum(v + rng.integers(-JITTER[c], JITTER[c] + 1, size=n), 0)
            cols_n[c].append(v)
        labels.append(label)
    s = {c: np.concatenate(v) for c, v in cols_s.items()}
    x = {c: np.concatenate(v) for c, v in cols_n.items()}
    y = np.concatenate(labels)
    total = len(y)

    table = {}
    for c in CATEGORICAL:
        table[c] = s[c]
    for c1, c2 in itertools.islice(itertools.combinations(CATEGORICAL, 2), 20):
        table[f"{c1}*{c2}"] = np.char.add(np.char.add(s[c1].astype(str), "|"), s[c2].astype(str))
    for c in NUMERIC:
        table[c] = x[c]
    table["log_gain"] = np.log1p(x["capital-gain"])
    table["log_loss"] = np.log1p(x["capital-loss"])
    table["age_sq"] = x["age"] ** 2
    table["hours_x_age"] = x["hours-per-week"] * x["age"]
    table["edu_x_hours"] = x["educational-num"] * x["hours-per-week"]
    table["noise"] = rng.standard_normal(total)
    table["income"] = y

    order = rng.permutation(total)
    cut = int(total * 0.8)
    os.makedirs(a.out, exist_ok=True)
    for name, idx, groups in (("train", order[:cut], 8), ("test", order[cut:], 1)):
        t = pa.table({k: pa.array(np.asarray(v)[idx].tolist() if v.dtype == object or v.dtype.kind == "U"
                                  else np.asarray(v)[idx]) for k, v in table.items()})
        path = os.path.join(a.out, f"{name}.parquet")
        pq.write_table(t, path, row_group_size=-(-len(idx) // groups), compression="zstd")
        print(f"{path}: {len(idx)} rows, {t.num_columns} columns")


if __name__ == "__main__":
    main()
