"""Where a network's training time goes (docs/neural.md): runs tidemill
under `perf record` and sums the samples by what their symbol does.

Usage: python benches/neural_profile.py PIPELINE WORKERS [extra tidemill args]
Prints one JSON object: the share of samples per category. Needs `perf`.
"""

import json
import os
import subprocess
import sys
import tempfile

BIN = os.path.abspath(os.environ.get("TIDEMILL_BIN", "target/release/tidemill"))

# First match wins.
CATEGORIES = [
    ("matrix products (matrixmultiply)", ["matrixmultiply::"]),
    ("exact sums (fixed-point rounding)", ["__fixdfti", "__floattidf", "round", "exact::",
                                           "Exact", "sum_partials", "take_partials"]),
    ("split network (unit_split: copies, hashed columns, activations)", ["unit_split::"]),
    ("network: other arithmetic", ["model::mlp::", "ndarray::", "tanh", "exp"]),
    ("optimizer step", ["optim::"]),
    ("decode (Parquet, Arrow, encode)", ["parquet::", "arrow", "encode::", "zstd", "ZSTD",
                                         "snap::", "decompress"]),
    ("exchange and waiting (timely, channels, scheduler)",
     ["timely", "bincode", "serde", "communication", "mpmc", "finish_task_switch", "spin",
      "futex", "schedule", "_copy_to_iter", "tcp_", "sock"]),
    ("memory (allocation, page faults, copies)", ["mi_", "clear_page", "memset", "memmove",
                                                  "memcpy", "malloc", "free", "page"]),
]


def main():
    pipeline, workers, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "perf.data")
        subprocess.run(["perf", "record", "-q", "-F", "999", "-o", data, BIN, "--log", "warn",
                        "train", pipeline, "--workers", workers] + extra,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort",
                                 "symbol", "--stdio", "-g", "none", "--percent-limit", "0"],
                                check=True, capture_output=True, text=True).stdout
    shares = {name: 0.0 for name, _ in CATEGORIES}
    shares["other"] = 0.0
    for line in report.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "%" not in line:
            continue
        pct, _, rest = line.partition("%")
        try:
            pct = float(pct)
        except ValueError:
            continue
        symbol = rest.split("]", 1)[-1].strip()
        for name, keys in CATEGORIES:
            if any(k in symbol for k in keys):
                shares[name] += pct
                break
        else:
            shares["other"] += pct
    print(json.dumps({k: round(v, 1) for k, v in shares.items()}))


if __name__ == "__main__":
    main()
