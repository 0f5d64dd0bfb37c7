#!/usr/bin/env python3
"""Peer benchmark harness: one subcommand per (peer, workload), each printing ONE JSON line.

    python peers.py <subcommand> [--rows N] [--runs K] [--timeout S]
    python peers.py list     # the subcommands
    python peers.py env      # one JSON line describing this machine and the peer versions

The top-level process is a supervisor: it runs the actual work in a child process
(`peers.py --worker <subcommand>`), bounded by --timeout (default 900 s), measures the
child's end-to-end wall time and peak RSS (max of wait4() ru_maxrss, i.e. the largest
single process incl. reaped descendants, and the sampled sum of RSS over the whole
process tree every 0.1 s - the latter matters for Spark's JVM), and repeats: if the
first run's wall is < 60 s it does 2 more runs and reports medians of the timing/RSS
fields; otherwise 1 run.  Quality metrics are taken from run 1.

Environment: BENCH_DATA (scratch, default /tmp/bench: W1 data, VW files, logs/),
BENCH_NYC (default ../../datasets/nycflights13.parquet relative to this file: the repository's bundled copy).
"""
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("BENCH_DATA", "/tmp/bench")
NYC = os.environ.get("BENCH_NYC", os.path.normpath(os.path.join(HERE, "..", "..", "datasets", "nycflights13.parquet")))
MARK = "@@RESULT@@ "
PAGE = os.sysconf("SC_PAGE_SIZE")

DENSE_TRAIN = os.path.join(DATA, "dense_train.parquet")
DENSE_TEST = os.path.join(DATA, "dense_test.parquet")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- metrics
def logloss_auc(y, p):
    import numpy as np
    from sklearn.metrics import roc_auc_score
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    ll = float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
    return ll, float(roc_auc_score(y, p))


def sigmoid(z):
    import numpy as np
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


class Timer:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t


# --------------------------------------------------------------------------- loaders
def dense_xy(path, rows=None, dtype="float32"):
    import numpy as np
    import pyarrow.parquet as pq
    if rows is None:
        t = pq.read_table(path)
    else:  # read only the leading row groups that are needed
        pf = pq.ParquetFile(path)
        k, got = 0, 0
        while k < pf.metadata.num_row_groups and got < rows:
            got += pf.metadata.row_group(k).num_rows
            k += 1
        t = pf.read_row_groups(list(range(k))).slice(0, rows)
    d = sum(1 for c in t.column_names if c.startswith("f"))
    X = np.empty((t.num_rows, d), dtype=dtype)
    for j in range(d):
        X[:, j] = t.column(f"f{j}").to_numpy()
    y = t.column("label").to_numpy().astype(np.int8)
    return X, y


# --------------------------------------------------------------------------- VW helpers
def vw_write(path, line_batches):
    """line_batches yields pyarrow string arrays (one VW example per element)."""
    n = 0
    with open(path, "w") as f:
        for arr in line_batches:
            lines = arr.to_pylist()
            n += len(lines)
            f.write("\n".join(lines))
            f.write("\n")
    return n


def vw_label(col):
    import pyarrow.compute as pc
    return pc.if_else(pc.equal(col, 1), "1", "-1")


def dense_vw_batches(path, rows=None, batch=62_500):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    d = sum(1 for c in pf.schema_arrow.names if c.startswith("f"))
    left = rows if rows is not None else pf.metadata.num_rows
    for rb in pf.iter_batches(batch_size=batch):
        if left <= 0:
            break
        if rb.num_rows > left:
            rb = rb.slice(0, left)
        left -= rb.num_rows
        parts = [vw_label(rb.column("label")), pa.scalar("|f")]
        for j in range(d):  # float32 -> shortest round-trip decimal string
            parts.append(pc.binary_join_element_wise(f"{j}:", pc.cast(rb.column(f"f{j}"), pa.string()), ""))
        yield pc.binary_join_element_wise(*parts, " ")


def _tok(col):
    """Make a string column safe as a VW feature name."""
    import pyarrow as pa
    import pyarrow.compute as pc
    col = pc.fill_null(pc.cast(col, pa.string()), "NA")
    col = pc.replace_substring_regex(col, r"\s+", "_")
    col = pc.replace_substring(col, ":", ";")
    col = pc.replace_substring(col, "|", "!")
    return col



def vw_train(args):
    import vowpalwabbit
    w = vowpalwabbit.Workspace(args)  # runs the native parser/driver over -d
    avg = w.get_sum_loss() / max(w.get_weighted_examples(), 1)
    w.finish()  # writes -f model, prints summary to stderr
    return avg


def vw_predict_raw(model, data, pred):
    import numpy as np
    import vowpalwabbit
    w = vowpalwabbit.Workspace(f"-i {model} -t -d {data} -p {pred} --quiet")
    w.finish()
    return np.loadtxt(pred, dtype=np.float64, usecols=0, ndmin=1)


# --------------------------------------------------------------------------- Spark helpers
def spark_session(app):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    local = os.path.join(DATA, "spark-local")
    jtmp = os.path.join(DATA, "jvm-tmp")
    os.makedirs(local, exist_ok=True)
    os.makedirs(jtmp, exist_ok=True)
    # keep every JVM's scratch (hsperfdata, extracted native libs) inside BENCH_DATA;
    # JAVA_TOOL_OPTIONS also reaches spark-class's launcher JVM
    os.environ["JAVA_TOOL_OPTIONS"] = f"-XX:-UsePerfData -Djava.io.tmpdir={jtmp}"
    spark = (SparkSession.builder.master("local[2]").appName(app)
             .config("spark.driver.memory", "8g")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.local.dir", local)
             .config("spark.sql.warehouse.dir", os.path.join(DATA, "spark-warehouse"))
             .config("spark.sql.shuffle.partitions", "4")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_p1(pred_df, label_col="label"):
    import numpy as np
    from pyspark.ml.functions import vector_to_array
    pdf = pred_df.select(pred_df[label_col].alias("y"),
                         vector_to_array("probability")[1].alias("p")).toPandas()
    return pdf["y"].to_numpy(np.float64), pdf["p"].to_numpy(np.float64)


# --------------------------------------------------------------------------- W1 dense
def w1_sgd(a):
    import numpy as np
    from sklearn.linear_model import SGDClassifier
    with Timer() as tl:
        X, y = dense_xy(DENSE_TRAIN, a.rows, dtype="float64")  # sklearn SGD works in float64
    clf = SGDClassifier(loss="log_loss", alpha=1e-6, max_iter=5, tol=None, random_state=0)
    with Timer() as tt:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, y)
    n = len(y)
    del X
    with Timer() as te:
        Xt, yt = dense_xy(DENSE_TEST, dtype="float64")
        ll, auc = logloss_auc(yt, clf.predict_proba(Xt)[:, 1])
    return dict(rows=n, epochs=5, load_s=tl.s, train_s=tt.s, eval_s=te.s, test_logloss=ll, test_auc=auc,
                n_test=len(yt), params="SGDClassifier(log_loss, alpha=1e-6, max_iter=5, tol=None, random_state=0)",
                n_iter=int(clf.n_iter_))


def w1_lbfgs(a):
    from sklearn.linear_model import LogisticRegression
    with Timer() as tl:
        X, y = dense_xy(DENSE_TRAIN, a.rows, dtype="float64")
    clf = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
    with Timer() as tt:
        clf.fit(X, y)
    n = len(y)
    del X
    with Timer() as te:
        Xt, yt = dense_xy(DENSE_TEST, dtype="float64")
        ll, auc = logloss_auc(yt, clf.predict_proba(Xt)[:, 1])
    it = int(clf.n_iter_[0])
    return dict(rows=n, epochs=it, load_s=tl.s, train_s=tt.s, eval_s=te.s, test_logloss=ll, test_auc=auc,
                n_test=len(yt), params="LogisticRegression(lbfgs, C=1e6, tol=1e-4, max_iter=1000); epochs=L-BFGS iterations")


def w1_vw(a):
    tr, te_, cache, model, pred = (os.path.join(DATA, f) for f in
                                   ("dense_train.vw", "dense_test.vw", "dense_train.vwcache", "dense.vwmodel", "dense_test.pred"))
    with Timer() as tl:
        n = vw_write(tr, dense_vw_batches(DENSE_TRAIN, a.rows))
    with Timer() as tt:
        avg = vw_train(f"-d {tr} --loss_function logistic --passes 5 --cache_file {cache} -k -b 18 --holdout_off -f {model}")
    with Timer() as te:
        vw_write(te_, dense_vw_batches(DENSE_TEST))
        raw = vw_predict_raw(model, te_, pred)
        _, yt = dense_xy(DENSE_TEST)
        ll, auc = logloss_auc(yt, sigmoid(raw))
    vwsize = os.path.getsize(tr)
    for f in (tr, te_, cache, pred):
        os.remove(f)
    return dict(rows=n, epochs=5, load_s=tl.s, train_s=tt.s, eval_s=te.s, test_logloss=ll, test_auc=auc,
                n_test=len(yt), train_avg_loss_vw=avg, vw_text_bytes=vwsize,
                params="vw --loss_function logistic --passes 5 --cache_file -k -b 18 --holdout_off (defaults: adaptive,normalized,invariant, lr 0.5); load_s=Parquet->VW text; train_s includes cache build in pass 1")


def w1_vw_stream(a):
    """W1 as a stream: one pass of VW, each row predicted before it is learnt (-p)."""
    import numpy as np
    import pyarrow.parquet as pq
    tr, pred = os.path.join(DATA, "dense_stream.vw"), os.path.join(DATA, "dense_stream.pred")
    with Timer() as tl:
        n = vw_write(tr, dense_vw_batches(DENSE_TRAIN, a.rows))
    y = pq.read_table(DENSE_TRAIN, columns=["label"]).column("label").to_numpy()[:n].astype(np.int8)
    with Timer() as tt:
        avg = vw_train(f"-d {tr} --loss_function logistic -b 18 -p {pred}")
    p = sigmoid(np.loadtxt(pred, dtype=np.float64, usecols=0, ndmin=1))
    ll, auc = logloss_auc(y, p)
    for f in (tr, pred):
        os.remove(f)
    return dict(rows=n, epochs=1, load_s=tl.s, train_s=tt.s, eval="progressive_validation",
                test_logloss=ll, test_auc=auc, progressive_logloss_vw_reported=avg,
                params="vw 1 pass --loss_function logistic -b 18 (defaults: adaptive,normalized,invariant, lr 0.5); predict-before-learn from -p; load_s=Parquet->VW text; train_s includes writing -p")


def w1_spark(a):
    with Timer() as ts:
        spark = spark_session("w1")
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F
    with Timer() as tl:
        df = spark.read.parquet(DENSE_TRAIN)
        if a.rows:
            df = df.limit(a.rows)
        feats = [c for c in df.columns if c.startswith("f")]
        va = VectorAssembler(inputCols=feats, outputCol="features")
        tr = va.transform(df).select("features", F.col("label").cast("double").alias("label")).cache()
        n = tr.count()
    lr = LogisticRegression(maxIter=20, regParam=0.0)
    with Timer() as tt:
        m = lr.fit(tr)
    it = int(m.summary.totalIterations)
    with Timer() as te:
        tst = va.transform(spark.read.parquet(DENSE_TEST)).select("features", F.col("label").cast("double").alias("label"))
        y, p = spark_p1(m.transform(tst))
        ll, auc = logloss_auc(y, p)
    spark.stop()
    return dict(rows=n, epochs=it, startup_s=ts.s, load_s=tl.s, train_s=tt.s, eval_s=te.s, test_logloss=ll, test_auc=auc,
                n_test=len(y), params="local[2], driver 8g, LogisticRegression(maxIter=20, regParam=0); load_s=read.parquet+VectorAssembler+cache+count; epochs=totalIterations")


def w1_river(a):
    from river import linear_model, optim
    rows = a.rows or 200_000
    with Timer() as tl:
        X, y = dense_xy(DENSE_TRAIN, rows)
        names = [f"f{j}" for j in range(X.shape[1])]
        xs = [dict(zip(names, r)) for r in X.astype("float64").tolist()]
        ys = [bool(v) for v in y.tolist()]
    model = linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    with Timer() as tt:
        for x, t in zip(xs, ys):
            model.learn_one(x, t)
    with Timer() as te:
        import pandas as pd
        Xt, yt = dense_xy(DENSE_TEST)
        pt = model.predict_proba_many(pd.DataFrame(Xt.astype("float64"), columns=names))[True].to_numpy()
        ll, auc = logloss_auc(yt, pt)
    eps = len(xs) / tt.s
    return dict(rows=len(xs), epochs=1, load_s=tl.s, train_s=tt.s, eval_s=te.s, test_logloss=ll, test_auc=auc,
                n_test=len(yt), est_train_s_4m_x5=4_000_000 * 5 / eps,
                params="river LogisticRegression(optimizer=SGD(0.01)), learn_one, first 200k rows only (cut: pure-Python per-example); load_s=Parquet->list of dicts")


# --------------------------------------------------------------------------- NYC flights (nycflights13)
# Label late15 (arr_delay > 15).  Rows are used in file order, which is time order (sorted by time_hour).
# Features: carrier, origin, dest, tailnum, hour as categorical tokens, the origin_dest pair token, and
# log1p(distance).  dep_delay, arr_delay, dep_time, arr_time and air_time are NOT read: they leak the label.
NYC_COLS = ["carrier", "origin", "dest", "tailnum", "hour", "distance", "late15"]
NYC_CAT = [("carrier", "c"), ("origin", "o"), ("dest", "d"), ("tailnum", "t"), ("hour", "h"), ("pair", "p")]
NYC_RIVER_BUDGET_S, NYC_RIVER_CUT = 120.0, 100_000
NYC_VW_FEATURES = "namespaces c,o,d,t,h,p with tokens carrier,origin,dest,tailnum,hour,origin_dest + n ldist:log1p(distance)"


def nyc_table(rows=None):
    import pyarrow.parquet as pq
    t = pq.read_table(NYC, columns=NYC_COLS)
    if rows is not None and rows < t.num_rows:
        t = t.slice(0, rows)
    return t


def nyc_split(n):
    """First 80% of rows (time order) train, last 20% test."""
    return n * 4 // 5


def nyc_features(t):
    """Returns ({name: VW-safe string array} for NYC_CAT, log1p(distance) float64 array, late15 array)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    f = {k: _tok(t.column(k)) for k in ("carrier", "origin", "dest", "tailnum")}
    f["hour"] = pc.cast(t.column("hour"), pa.string())
    f["pair"] = pc.binary_join_element_wise(f["origin"], f["dest"], "_")
    ld = pc.log1p(pc.cast(t.column("distance"), pa.float64()))
    return f, ld, t.column("late15")


def nyc_vw_batches(t, batch=100_000):
    import pyarrow as pa
    import pyarrow.compute as pc
    for s in range(0, t.num_rows, batch):
        f, ld, y = nyc_features(t.slice(s, batch))
        parts = [vw_label(y)]
        parts += [pc.binary_join_element_wise(f"|{ns} {ns}=", f[k], "") for k, ns in NYC_CAT]
        parts.append(pc.binary_join_element_wise("|n ldist:", pc.cast(pc.round(ld, 6), pa.string()), ""))
        yield pc.binary_join_element_wise(*parts, " ")


def nyc_vw_stream(a):
    import numpy as np
    tr, pred = os.path.join(DATA, "nyc_stream.vw"), os.path.join(DATA, "nyc_stream.pred")
    with Timer() as tl:
        t = nyc_table(a.rows)
        n = vw_write(tr, nyc_vw_batches(t))
    y = t.column("late15").to_numpy().astype(np.int8)
    del t
    with Timer() as tt:
        avg = vw_train(f"-d {tr} --loss_function logistic -b 22 -p {pred}")
    p = sigmoid(np.loadtxt(pred, dtype=np.float64, usecols=0, ndmin=1))
    ll, auc = logloss_auc(y, p)
    k = min(NYC_RIVER_CUT, n)
    llk, auck = logloss_auc(y[:k], p[:k])
    for f in (tr, pred):
        os.remove(f)
    return dict(rows=n, epochs=1, load_s=tl.s, train_s=tt.s, eval="progressive_validation",
                test_logloss=ll, test_auc=auc, progressive_logloss_vw_reported=avg,
                progressive_logloss_100k=llk, progressive_auc_100k=auck,
                params=f"vw 1 pass --loss_function logistic -b 22 (defaults: adaptive,normalized,invariant, lr 0.5), {NYC_VW_FEATURES}; predict-before-learn from -p; load_s=Parquet->VW text; train_s includes writing -p")


def nyc_river_stream(a):
    from river import linear_model, optim
    with Timer() as tl:
        t = nyc_table(a.rows)
        f, ld, y = nyc_features(t)
        cols = [[f"{ns}={v}" for v in f[k].to_pylist()] for k, ns in NYC_CAT]
        xs = [dict.fromkeys(toks, 1.0) for toks in zip(*cols)]
        for x, v in zip(xs, ld.to_pylist()):
            x["ldist"] = v
        ys = [bool(v) for v in y.to_pylist()]
        del cols
    model = linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    ps = [0.0] * len(xs)
    n, cut, t_cut = len(xs), False, None
    t0 = time.perf_counter()
    for i, (x, yy) in enumerate(zip(xs, ys)):
        if i == NYC_RIVER_CUT:
            t_cut = time.perf_counter() - t0
        elif i > NYC_RIVER_CUT and i % 1024 == 0 and time.perf_counter() - t0 > NYC_RIVER_BUDGET_S:
            cut = True
            break
        ps[i] = model.predict_proba_one(x).get(True, 0.5)
        model.learn_one(x, yy)
    train_s = time.perf_counter() - t0
    if cut:  # over budget: report the first 100k rows only
        n, train_s = NYC_RIVER_CUT, t_cut
    ll, auc = logloss_auc(ys[:n], ps[:n])
    return dict(rows=n, epochs=1, load_s=tl.s, train_s=train_s, eval="progressive_validation",
                test_logloss=ll, test_auc=auc, rows_available=len(xs), cut_to_100k=cut,
                params=f"river LogisticRegression(SGD(0.01)), one-hot dict features c,o,d,t,h,p tokens + ldist; predict_proba_one then learn_one; all rows if predict+learn finishes within {NYC_RIVER_BUDGET_S:.0f} s, else first 100k; load_s=Parquet->list of dicts; train_s = predict+learn")


def nyc_vw_batch(a):
    import numpy as np
    tr, te_, cache, model, pred = (os.path.join(DATA, f) for f in
                                   ("nyc_train.vw", "nyc_test.vw", "nyc_train.vwcache", "nyc.vwmodel", "nyc_test.pred"))
    with Timer() as tl:
        t = nyc_table(a.rows)
        k = nyc_split(t.num_rows)
        n = vw_write(tr, nyc_vw_batches(t.slice(0, k)))
    with Timer() as tt:
        avg = vw_train(f"-d {tr} --loss_function logistic --passes 5 --cache_file {cache} -k -b 22 --holdout_off -f {model}")
    with Timer() as te:
        test = t.slice(k)
        vw_write(te_, nyc_vw_batches(test))
        raw = vw_predict_raw(model, te_, pred)
        yt = test.column("late15").to_numpy().astype(np.int8)
        ll, auc = logloss_auc(yt, sigmoid(raw))
    for f in (tr, te_, cache, pred):
        os.remove(f)
    return dict(rows=n, epochs=5, load_s=tl.s, train_s=tt.s, eval_s=te.s, test_logloss=ll, test_auc=auc,
                n_test=len(yt), eval="time_split_80_20", train_avg_loss_vw=avg,
                params=f"vw --loss_function logistic --passes 5 --cache_file -k -b 22 --holdout_off, {NYC_VW_FEATURES}; train = first 80% of rows in file (time) order, test = last 20%; train_s includes cache build in pass 1")


def nyc_sklearn_batch(a):
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder
    cat = [k for k, _ in NYC_CAT]
    with Timer() as tl:
        t = nyc_table(a.rows)
        f, ld, y = nyc_features(t)
        df = pd.DataFrame({k: f[k].to_numpy(zero_copy_only=False) for k in cat})
        df["ldist"] = ld.to_numpy()
        y = y.to_numpy().astype(np.int8)
        k = nyc_split(len(df))
        Xtr, ytr = df.iloc[:k], y[:k]
    pipe = Pipeline([
        ("prep", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore", min_frequency=5), cat),
                                    ("num", "passthrough", ["ldist"])])),
        ("lr", LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000)),
    ])
    with Timer() as tt:
        pipe.fit(Xtr, ytr)
    with Timer() as te:
        yt = y[k:]
        ll, auc = logloss_auc(yt, pipe.predict_proba(df.iloc[k:])[:, 1])
    it = int(pipe.named_steps["lr"].n_iter_[0])
    return dict(rows=k, epochs=it, load_s=tl.s, train_s=tt.s, eval_s=te.s, test_logloss=ll, test_auc=auc,
                n_test=len(yt), eval="time_split_80_20", n_features=int(pipe.named_steps["lr"].coef_.shape[1]),
                converged=it < 1000,
                params="OneHotEncoder(handle_unknown='ignore', min_frequency=5) on carrier,origin,dest,tailnum,hour,origin_dest + log1p(distance) passthrough -> LogisticRegression(lbfgs, C=1, max_iter=1000); same 80/20 time split; train_s includes encoding; epochs=L-BFGS iterations")


# --------------------------------------------------------------------------- registry
WORK = {
    "w1-sgd": ("sklearn-SGDClassifier", "W1-dense", w1_sgd),
    "w1-lbfgs": ("sklearn-LogisticRegression-lbfgs", "W1-dense", w1_lbfgs),
    "w1-vw": ("vowpalwabbit", "W1-dense", w1_vw),
    "w1-spark": ("spark-mllib", "W1-dense", w1_spark),
    "w1-river": ("river", "W1-dense", w1_river),
    "w1-vw-stream": ("vowpalwabbit", "W1-stream", w1_vw_stream),
    "nyc-vw-stream": ("vowpalwabbit", "nyc-stream", nyc_vw_stream),
    "nyc-river-stream": ("river", "nyc-stream", nyc_river_stream),
    "nyc-vw-batch": ("vowpalwabbit", "nyc-batch", nyc_vw_batch),
    "nyc-sklearn-batch": ("sklearn-LogisticRegression-lbfgs", "nyc-batch", nyc_sklearn_batch),
}
TIMING = ("wall_s", "startup_s", "load_s", "train_s", "eval_s", "peak_rss_mb", "peak_rss_maxproc_mb",
          "peak_rss_tree_mb", "examples_per_s")


def _rnd(v):
    if isinstance(v, float):
        return float(f"{v:.6g}") if abs(v) < 1e5 else round(v, 1)
    return v


def worker(name, a):
    peer, wl, fn = WORK[name]
    r = fn(a)
    out = {"peer": peer, "workload": wl, "sub": name}
    out.update(r)
    if r.get("train_s") and r.get("rows"):
        out["examples_per_s"] = r["rows"] * r["epochs"] / r["train_s"]
    print(MARK + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- supervisor
def _tree_rss(root):
    kids, rss = {}, {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                s = f.read().decode()
        except OSError:
            continue
        rest = s[s.rfind(")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(p))
        rss[int(p)] = int(rest[21]) * PAGE
    tot, stack = 0, [root]
    while stack:
        q = stack.pop()
        tot += rss.get(q, 0)
        stack.extend(kids.get(q, []))
    return tot


def run_once(name, a, k):
    os.makedirs(os.path.join(DATA, "logs"), exist_ok=True)
    base = os.path.join(DATA, "logs", f"{name}-run{k}")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name]
    if a.rows:
        cmd += ["--rows", str(a.rows)]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    with open(base + ".out", "w") as fo, open(base + ".err", "w") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=DATA, env=env, start_new_session=True)
        peak_tree, status, ru, timed_out = 0, None, None, False
        while True:
            pid, st, r = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                status, ru = st, r
                break
            peak_tree = max(peak_tree, _tree_rss(p.pid))
            if time.perf_counter() - t0 > a.timeout:
                timed_out = True
                os.killpg(p.pid, 9)  # the group we created for this child
                _, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    res = None
    with open(base + ".out") as f:
        for line in f:
            if line.startswith(MARK):
                res = json.loads(line[len(MARK):])
    maxproc = ru.ru_maxrss / 1024.0  # KiB -> MiB
    if res is None:
        peer, wl, _ = WORK[name]
        with open(base + ".err") as f:
            tail = f.read()[-600:]
        res = {"peer": peer, "workload": wl, "sub": name,
               "error": f"timeout after {a.timeout}s" if timed_out else f"exit {p.returncode}: {tail}"}
    res["wall_s"] = wall
    res["peak_rss_maxproc_mb"] = maxproc
    res["peak_rss_tree_mb"] = peak_tree / 2**20
    res["peak_rss_mb"] = max(maxproc, peak_tree / 2**20)
    return res


def supervise(name, a):
    runs = [run_once(name, a, 1)]
    want = a.runs if a.runs else (1 if (runs[0]["wall_s"] >= 60 or "error" in runs[0]) else 3)
    while len(runs) < want and "error" not in runs[-1]:
        runs.append(run_once(name, a, len(runs) + 1))
    out = dict(runs[0])
    ok = [r for r in runs if "error" not in r]
    for key in TIMING:
        vals = [r[key] for r in ok if r.get(key) is not None]
        if vals:
            out[key] = statistics.median(vals)
    out["runs"] = len(runs)
    out["wall_s_runs"] = [round(r["wall_s"], 2) for r in runs]
    if len(ok) > 1:
        lls = [r.get("test_logloss") for r in ok]
        out["metrics_identical_across_runs"] = all(v == lls[0] for v in lls)
    out["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    out["host"] = f"{os.cpu_count()} cpu"
    first = ["peer", "workload", "sub", "rows", "epochs", "wall_s", "load_s", "train_s", "peak_rss_mb", "examples_per_s",
             "test_logloss", "test_auc"]
    ordered = {k: out.get(k) for k in first}
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    print(json.dumps({k: _rnd(v) for k, v in ordered.items()}), flush=True)
    return 0 if ok else 1


def env_info():
    """Machine and peer versions, so that results files say where they were measured."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"peer": "run_all", "workload": "env", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "ncpu": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            out["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    for pkg in ("scikit-learn", "vowpalwabbit", "river", "pyspark", "pyarrow", "numpy", "pandas", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        jv = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr
        out["java"] = jv.splitlines()[0] if jv else None
    except (OSError, subprocess.SubprocessError):
        out["java"] = None
    return out


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", help="subcommand: " + ", ".join(WORK) + ", list, env")
    ap.add_argument("--rows", type=int, default=None,
                    help="cut the input to the first N rows (nyc batch: the 80/20 split is of those N)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=None, help="force number of runs (default: 3 if run 1 < 60 s else 1)")
    ap.add_argument("--timeout", type=float, default=900.0, help="per-run wall limit in seconds")
    argv = sys.argv[1:]
    if argv and argv[0] == "--worker":
        argv = argv[1:] + ["--worker"]
    a = ap.parse_args(argv)
    if a.cmd == "list":
        print("\n".join(WORK))
        return 0
    if a.cmd == "env":
        print(json.dumps(env_info()))
        return 0
    if a.cmd not in WORK:
        ap.error(f"unknown subcommand {a.cmd}")
    if a.worker:
        worker(a.cmd, a)
        return 0
    return supervise(a.cmd, a)


if __name__ == "__main__":
    sys.exit(main())
