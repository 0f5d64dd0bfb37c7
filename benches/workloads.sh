# Workloads and strategy settings shared by benches/strategies.sh and
# benches/before_after.sh (sourced; BENCH_DATA must be set).
#   w1    — dense synthetic logistic, 4M × 32 (benches/peers/gen_dense.py)
#   nyc22 — pipelines/nycflights.toml hashed into 2^22 slots
declare -A WORKLOAD=(
  [w1]="benches/w1.toml --set data.train=$BENCH_DATA/dense_train.parquet --set 'data.validation={path=\"$BENCH_DATA/dense_test.parquet\"}'"
  [nyc22]="pipelines/nycflights.toml --set data.hash_bits=22"
)
declare -A STRATEGY=(
  [allreduce]="--set train.strategy=allreduce"
  [ps-s4]="--set train.strategy=param-server --set train.staleness=4"
  [ps-async]="--set train.strategy=param-server --set train.staleness=async"
  [model-average]="--set train.strategy=model-average --set train.sync_every=16"
  [model-parallel]="--set train.strategy=model-parallel"
)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
