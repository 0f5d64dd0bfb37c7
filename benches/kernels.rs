//! Criterion benchmarks of the inner kernels, on the shapes of the
//! benchmark workloads (docs/benchmarks.md#kernels):
//!
//! - `gradient/dense`: one partial of a logistic model's loss gradient over
//!   4096 rows of 32 numeric features (W1's shape): margins (dense dot),
//!   loss, the gradient's axpy, and its exact rounding;
//! - `gradient/hashed`: the same over 4096 rows of 12 numeric and 28
//!   hashed features into 2^18 slots (the wide L-BFGS table's shape): the
//!   sparse gradient and its touched list, slots uniform (few repeats);
//!   `gradient/hashed-categorical`: each column with 50 values, as a
//!   categorical column's (most slots repeat);
//! - `exact/accumulate`: rounding a 2^16-coordinate `f64` partial into the
//!   exact accumulator;
//! - `lbfgs/iteration`: the owner's work for one L-BFGS iteration on 2^18
//!   coordinates with a full history of 10 pairs (observe the gradient,
//!   accept, two-loop recursion, next trial point);
//! - `lbfgs/sharded-owner-K-of-16`: the same iteration's work for one
//!   owner of sharded, vector-free L-BFGS holding K of the 16 shards of
//!   2^18 coordinates (K = 16: one worker; 8: two; 2: eight; 1: sixteen):
//!   accept, its shards' dot products, the direction and the next trial
//!   point (the reduction itself is a round of scalars, not timed here);
//! - `decode/wide`: decoding an Arrow batch of 8192 rows of the wide shape
//!   (12 numeric columns, 28 string columns hashed) into a block.
//!
//! ```sh
//! cargo bench --bench kernels                 # all
//! cargo bench --bench kernels -- gradient     # a group
//! ```

// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray};
use arrow::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tidemill::data::encode::{decode, Block, LabelUse, NumericFeature, Origin};
use tidemill::exact::{self, Exact};
use tidemill::model::{Layout, LinearModel, Scratch};
use tidemill::optim::lbfgs::{Lbfgs, Next};
use tidemill::optim::vector_free::{Request, Scalars, ShardedLbfgs};
use tidemill::optim::Penalty;
use tidemill::plan::features::FeatureSpec;
use tidemill::spec::{ModelKind, OnMissing};

const ROWS: usize = 4096;

/// A block of `ROWS` rows: `p` standard-ish numeric features and `c`
/// hashed slots in `[0, 2^bits)` (each column's drawn from `distinct`
/// values when given, as a categorical column's are), 0/1 labels.
fn block(rng: &mut ChaCha8Rng, p: usize, c: usize, bits: u32, distinct: Option<u32>) -> Block {
    let values: Vec<Vec<u32>> = (0..c)
        .map(|_| {
            (0..distinct.unwrap_or(0))
                .map(|_| rng.random_range(0..1u32 << bits))
                .collect()
        })
        .collect();
    Block {
        rows: ROWS,
        p,
        dense: (0..ROWS * p).map(|_| rng.random_range(-2.0..2.0)).collect(),
        c,
        hashed: (0..ROWS * c)
            .map(|i| match distinct {
                Some(k) => values[i % c][rng.random_range(0..k) as usize],
                None => rng.random_range(0..1u32 << bits),
            })
            .collect(),
        signs: (0..ROWS * c)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect(),
        label: (0..ROWS)
            .map(|_| f64::from(u8::from(rng.random::<bool>())))
            .collect(),
        ..Block::default()
    }
}

fn model(rng: &mut ChaCha8Rng, p: usize, bits: u32) -> LinearModel {
    let layout = Layout {
        k: 1,
        d: p + (1usize << bits),
        p,
    };
    LinearModel {
        kind: ModelKind::Logistic,
        layout,
        theta: (0..layout.len())
            .map(|_| rng.random_range(-0.1..0.1))
            .collect(),
    }
}

fn gradient(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut group = c.benchmark_group("gradient");
    group.throughput(Throughput::Elements(ROWS as u64));
    for (name, p, hashed, bits, distinct) in [
        ("dense", 32, 0, 0, None),
        ("hashed", 12, 28, 18, None),
        ("hashed-categorical", 12, 28, 18, Some(50)),
    ] {
        let b = block(&mut rng, p, hashed, bits, distinct);
        let m = model(&mut rng, p, bits);
        let mut scratch = Scratch::default();
        let mut acc = vec![Exact::default(); m.layout.len()];
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let out = m
                    .accumulate(&b, 0..ROWS, &mut scratch, (&mut acc).into())
                    .unwrap_or_else(|e| panic!("{e}"));
                scratch.drain_touched().for_each(drop);
                black_box(out)
            })
        });
    }
    group.finish();
}

fn exact_accumulate(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n = 1 << 16;
    let partial: Vec<f64> = (0..n).map(|_| rng.random_range(-10.0..10.0)).collect();
    let mut acc = vec![Exact::default(); n];
    let mut group = c.benchmark_group("exact");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("accumulate", |bench| {
        bench.iter(|| {
            black_box(exact::accumulate(&mut acc, &partial).unwrap_or_else(|i| panic!("{i}")))
        })
    });
    group.finish();
}

/// One L-BFGS iteration's owner work on a separable quadratic
/// `½ Σ a_i (x_i − 1)²` over 2^18 coordinates, with a full history.
fn lbfgs_iteration(c: &mut Criterion) {
    let n = 1 << 18;
    let a: Vec<f64> = (0..n).map(|i| 1.0 + (i % 97) as f64).collect();
    let eval = |x: &[f64], g: &mut Vec<f64>| -> f64 {
        g.clear();
        let mut f = 0.0;
        for (xi, ai) in x.iter().zip(&a) {
            let r = xi - 1.0;
            g.push(ai * r);
            f += 0.5 * ai * r * r;
        }
        f
    };
    let penalty = Penalty { l2: 0.0, l1: 0.0 };
    let mut opt = Lbfgs::new(vec![0.0; n], 10, 0.0, penalty, vec![true; n]);
    let mut point = opt.first_point().to_vec();
    let mut g = Vec::with_capacity(n);
    // Fill the history (10 accepted iterations).
    while opt.iterations() < 12 {
        let f = eval(&point, &mut g);
        point = match opt.observe(f, &g) {
            Next::Evaluate(p) => p,
            Next::Accepted { .. } => opt.propose(),
            Next::Stalled => break,
        };
    }
    let mut group = c.benchmark_group("lbfgs");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("iteration", |bench| {
        // The loss and gradient at the pending trial point are the
        // workers' part: computed once, outside the timing.
        let mut gg = Vec::with_capacity(n);
        let f = eval(&point, &mut gg);
        bench.iter_batched(
            || (opt.clone(), gg.clone()),
            |(mut o, gg)| {
                // Observe (accept or backtrack) and, once accepted,
                // propose; the state is returned, to be dropped untimed.
                let next = match o.observe(f, &gg) {
                    Next::Accepted { .. } => o.propose(),
                    Next::Evaluate(p) => p,
                    Next::Stalled => Vec::new(),
                };
                (o, gg, next)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// One owner's work per iteration of sharded L-BFGS on the quadratic of
/// [`lbfgs_iteration`], holding `k` of 16 shards of 2^18 coordinates with a
/// full history; the totals are its own partials' (the arithmetic is that
/// of any owner holding `k` shards).
fn lbfgs_sharded_owner(c: &mut Criterion) {
    let n = 1 << 18;
    let shard = n / 16;
    let a: Vec<f64> = (0..n).map(|i| 1.0 + (i % 97) as f64).collect();
    let mut group = c.benchmark_group("lbfgs");
    group.throughput(Throughput::Elements(n as u64));
    for k in [16usize, 8, 2, 1] {
        let eval = |o: &ShardedLbfgs| -> (f64, Vec<Vec<f64>>) {
            let mut f = 0.0;
            let grads = (0..k)
                .map(|p| {
                    let a = &a[p * shard..(p + 1) * shard];
                    o.trial(p)
                        .iter()
                        .zip(a)
                        .map(|(xi, ai)| {
                            let r = xi - 1.0;
                            f += 0.5 * ai * r * r;
                            ai * r
                        })
                        .collect()
                })
                .collect();
            (f, grads)
        };
        let total = |o: &ShardedLbfgs| {
            let mut t = Scalars::default();
            (0..k).for_each(|p| t.add(&o.partials(p)));
            t
        };
        let penalty = Penalty { l2: 0.0, l1: 0.0 };
        let pieces = (0..k)
            .map(|_| (vec![0.0; shard], vec![true; shard]))
            .collect();
        let mut opt = ShardedLbfgs::new(pieces, 10, 0.0, None, penalty);
        let mut request = Request::Evaluate;
        while opt.iterations() < 12 {
            request = match request {
                Request::Evaluate => {
                    let (f, g) = eval(&opt);
                    let t = total(&opt);
                    opt.on_trial(f, &g, &t).expect("fits")
                }
                Request::Reduce => {
                    let t = total(&opt);
                    opt.on_gram(&t).expect("fits")
                }
                Request::Accepted { .. } => opt.propose(),
                Request::Stalled => break,
            };
        }
        if let Request::Accepted { .. } = request {
            request = opt.propose();
        }
        assert_eq!(request, Request::Evaluate, "a trial point is pending");
        // Time an accepted trial: backtrack until the pending one is.
        let (f, g, t) = loop {
            let (f, g) = eval(&opt);
            let t = total(&opt);
            if opt.clone().on_trial(f, &g, &t) == Ok(Request::Reduce) {
                break (f, g, t);
            }
            assert_eq!(opt.on_trial(f, &g, &t), Ok(Request::Evaluate));
        };
        group.bench_function(format!("sharded-owner-{k}-of-16"), |bench| {
            bench.iter_batched(
                || (opt.clone(), g.clone()),
                |(mut o, g)| {
                    let mut r = o.on_trial(f, &g, &t).expect("fits");
                    if r == Request::Reduce {
                        let reduced = total(&o);
                        r = o.on_gram(&reduced).expect("fits");
                    }
                    if let Request::Accepted { .. } = r {
                        o.propose();
                    }
                    (o, g)
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn decode_wide(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let rows = 8192;
    let numeric: Vec<String> = (0..12).map(|i| format!("x{i}")).collect();
    let strings: Vec<String> = (0..28).map(|i| format!("s{i}")).collect();
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    for n in &numeric {
        let v: Vec<f64> = (0..rows).map(|_| rng.random_range(0.0..100.0)).collect();
        columns.push((n.clone(), Arc::new(Float64Array::from(v))));
    }
    for (j, s) in strings.iter().enumerate() {
        let v: Vec<String> = (0..rows)
            .map(|_| format!("v{j}-{}", rng.random_range(0..200)))
            .collect();
        columns.push((s.clone(), Arc::new(StringArray::from(v))));
    }
    let label: Vec<f64> = (0..rows)
        .map(|_| f64::from(u8::from(rng.random::<bool>())))
        .collect();
    columns.push(("y".into(), Arc::new(Float64Array::from(label))));
    let batch = RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"));
    let spec = FeatureSpec {
        label: "y".into(),
        numeric: numeric
            .iter()
            .map(|n| NumericFeature {
                name: n.clone(),
                fill: 0.0,
                center: 50.0,
                scale: 29.0,
            })
            .collect(),
        categorical: strings,
        crosses: Vec::new(),
        hash_bits: 18,
        on_missing: OnMissing::Error,
        classes: None,
        weight: None,
    };
    let origin = Origin {
        file: Path::new("bench.parquet"),
        row_group: Some(0),
        first_row: 0,
    };
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("wide", |bench| {
        bench.iter(|| {
            black_box(
                decode(&batch, &spec, LabelUse::Value, &origin).unwrap_or_else(|e| panic!("{e}")),
            )
        })
    });
    group.finish();
}

criterion_group!(
    kernels,
    gradient,
    exact_accumulate,
    lbfgs_iteration,
    lbfgs_sharded_owner,
    decode_wide
);
criterion_main!(kernels);
