#!/usr/bin/env bash
# The test suite with its real neighbours: a Python virtual environment in
# target/test-venv with pyarrow, scikit-learn, DuckDB (Python and CLI) and
# Polars, which the tests compare with and pipe through. With them
# required, a missing neighbour fails the suite instead of skipping.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test etl`).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/test-venv
if ! "$venv/bin/python" -c "import pyarrow, sklearn, duckdb, polars" 2>/dev/null \
  || [ ! -x "$venv/bin/duckdb" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pyarrow scikit-learn duckdb duckdb-cli polars
fi
export TIDEMILL_PYTHON=$PWD/$venv/bin/python
export TIDEMILL_REQUIRE_PYARROW=1 TIDEMILL_REQUIRE_SKLEARN=1 TIDEMILL_REQUIRE_ETL=1
exec cargo test --release --locked "$@"
