//! Convex models must reach the optimum an independent f64 solver finds:
//! Newton's method for L2 logistic regression, the normal equations for
//! ridge. tidemill's objective is `mean loss + l2/2·‖w‖²` (intercept not
//! penalised), squared loss `½(y − ŷ)²`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;

use common::{load, logistic_objective, margin, ridge_objective, root, sigmoid, solve, Problem};
use tidemill::cluster::Cluster;
use tidemill::spec::Pipeline;

/// Newton's method in f64 on the L2 logistic objective.
fn newton_logistic(p: &Problem, l2: f64) -> Vec<f64> {
    let d = p.x[0].len() + 1;
    let n = p.y.len() as f64;
    let mut theta = vec![0.0; d];
    for _ in 0..100 {
        let mut g = vec![0.0; d];
        let mut h = vec![vec![0.0; d]; d];
        for (x, &y) in p.x.iter().zip(&p.y) {
            let s = sigmoid(margin(&theta, x));
            let xt: Vec<f64> = std::iter::once(1.0).chain(x.iter().copied()).collect();
            for a in 0..d {
                g[a] += (s - y) * xt[a] / n;
                for b in 0..d {
                    h[a][b] += s * (1.0 - s) * xt[a] * xt[b] / n;
                }
            }
        }
        for a in 1..d {
            g[a] += l2 * theta[a];
            h[a][a] += l2;
        }
        let step = solve(h, g);
        theta.iter_mut().zip(&step).for_each(|(t, s)| *t -= s);
        if step.iter().map(|s| s.abs()).fold(0.0, f64::max) < 1e-15 {
            break;
        }
    }
    theta
}

/// The normal equations of ridge regression in f64.
fn ridge_closed_form(p: &Problem, l2: f64) -> Vec<f64> {
    let d = p.x[0].len() + 1;
    let n = p.y.len() as f64;
    let mut a = vec![vec![0.0; d]; d];
    let mut b = vec![0.0; d];
    for (x, &y) in p.x.iter().zip(&p.y) {
        let xt: Vec<f64> = std::iter::once(1.0).chain(x.iter().copied()).collect();
        for i in 0..d {
            b[i] += xt[i] * y / n;
            for j in 0..d {
                a[i][j] += xt[i] * xt[j] / n;
            }
        }
    }
    for (i, row) in a.iter_mut().enumerate().skip(1) {
        row[i] += l2;
    }
    solve(a, b)
}

/// Trains in-process and returns [intercept, coefficients in column order].
fn train(toml: &str, overrides: &[&str], names: &[String], workers: usize) -> Vec<f64> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let pipeline = Pipeline::parse(toml, Path::new("test.toml"), &overrides).unwrap();
    let cluster = Cluster {
        workers,
        ..Cluster::default()
    };
    let report = tidemill::train::run(pipeline, &cluster).unwrap();
    let model = report.model.unwrap();
    let mut theta = vec![model.intercept.number().unwrap()];
    let coefficients = model.coefficients.named().unwrap();
    for n in names {
        theta.push(coefficients.iter().find(|(k, _)| k == n).unwrap().1);
    }
    theta
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn pipeline(file: &str, label: &str, kind: &str, l2: f64) -> String {
    let path = root().join("datasets").join(file);
    format!(
        "[data]\ntrain = {:?}\nlabel = \"{label}\"\nstandardize = true\npartition = \"shuffle\"\nseed = 1\n\
         [model]\nkind = \"{kind}\"\nl2 = {l2}\n[optimizer]\nkind = \"lbfgs\"\n[train]\nepochs = 1000\n",
        path.to_string_lossy()
    )
}

#[test]
fn lbfgs_logistic_reaches_newton_optimum_on_breast_cancer() {
    let l2 = 0.01;
    let p = load("breast_cancer.parquet", "target");
    let best = newton_logistic(&p, l2);
    let f_best = logistic_objective(&p, &best, l2);
    for workers in [1, 3] {
        let theta = train(
            &pipeline("breast_cancer.parquet", "target", "logistic", l2),
            &[],
            &p.names,
            workers,
        );
        let f = logistic_objective(&p, &theta, l2);
        assert!(
            (f - f_best).abs() / f_best < 1e-7,
            "objective {f} vs optimum {f_best}"
        );
        let diff = max_abs_diff(&theta, &best);
        assert!(diff < 1e-4, "coefficients differ by {diff}");
    }
}

#[test]
fn lbfgs_ridge_reaches_closed_form_on_california_housing() {
    let l2 = 0.001;
    let p = load("california_housing.parquet", "MedHouseVal");
    let best = ridge_closed_form(&p, l2);
    let f_best = ridge_objective(&p, &best, l2);
    let theta = train(
        &pipeline("california_housing.parquet", "MedHouseVal", "linear", l2),
        &[],
        &p.names,
        2,
    );
    let f = ridge_objective(&p, &theta, l2);
    assert!(
        (f - f_best).abs() / f_best < 1e-7,
        "objective {f} vs optimum {f_best}"
    );
    let diff = max_abs_diff(&theta, &best);
    assert!(diff < 1e-4, "coefficients differ by {diff}");
}

/// First-order methods with a decaying rate get close to the optimum; the
/// tolerances are documented in docs/optimizers.md.
#[test]
fn first_order_methods_reach_documented_tolerance() {
    let l2 = 0.01;
    let p = load("breast_cancer.parquet", "target");
    let best = newton_logistic(&p, l2);
    let f_best = logistic_objective(&p, &best, l2);
    let base = pipeline("breast_cancer.parquet", "target", "logistic", l2);
    let cases: [(&str, &[&str]); 5] = [
        (
            "sgd",
            &[
                "optimizer.kind=sgd",
                "optimizer.learning_rate=0.5",
                "optimizer.batch_size=32",
                "optimizer.schedule=inverse_sqrt",
                "optimizer.decay=0.05",
                "train.epochs=200",
            ],
        ),
        (
            "momentum",
            &[
                "optimizer.kind=momentum",
                "optimizer.learning_rate=0.05",
                "optimizer.batch_size=32",
                "optimizer.schedule=inverse_sqrt",
                "optimizer.decay=0.05",
                "train.epochs=200",
            ],
        ),
        (
            "adagrad",
            &[
                "optimizer.kind=adagrad",
                "optimizer.learning_rate=0.2",
                "optimizer.batch_size=32",
                "train.epochs=200",
            ],
        ),
        (
            "ftrl",
            &[
                "optimizer.kind=ftrl",
                "optimizer.learning_rate=0.5",
                "optimizer.batch_size=32",
                "train.epochs=200",
            ],
        ),
        (
            "adam",
            &[
                "optimizer.kind=adam",
                "optimizer.learning_rate=0.05",
                "optimizer.batch_size=32",
                "optimizer.schedule=inverse_sqrt",
                "optimizer.decay=0.05",
                "train.epochs=200",
            ],
        ),
    ];
    for (name, overrides) in cases {
        let theta = train(&base, overrides, &p.names, 2);
        let f = logistic_objective(&p, &theta, l2);
        let rel = (f - f_best) / f_best;
        let diff = max_abs_diff(&theta, &best);
        eprintln!("{name}: objective gap {rel:.2e}, max coefficient difference {diff:.2e}");
        assert!(rel >= -1e-9, "{name} beat the optimum: solver bug");
        assert!(
            rel < 1e-3,
            "{name}: objective {f} vs optimum {f_best} (gap {rel:.2e})"
        );
        assert!(diff < 0.05, "{name}: coefficients differ by {diff}");
    }
}

/// L1: OWL-QN (L-BFGS) and FTRL-Proximal reach the same L1-regularised
/// optimum and both set weights exactly to zero.
#[test]
fn l1_optimum_owlqn_and_ftrl_agree() {
    let (l1, l2) = (0.02, 0.001);
    let p = load("breast_cancer.parquet", "target");
    let objective = |t: &[f64]| {
        logistic_objective(&p, t, l2) + l1 * t[1..].iter().map(|w| w.abs()).sum::<f64>()
    };
    let base = pipeline("breast_cancer.parquet", "target", "logistic", l2);
    let l1_set = format!("model.l1={l1}");
    let owlqn = train(&base, &[&l1_set], &p.names, 2);
    let ftrl = train(
        &base,
        &[
            &l1_set,
            "optimizer.kind=ftrl",
            "optimizer.learning_rate=0.5",
            "optimizer.batch_size=32",
            "train.epochs=300",
        ],
        &p.names,
        2,
    );
    let (fo, ff) = (objective(&owlqn), objective(&ftrl));
    let zeros = |t: &[f64]| t[1..].iter().filter(|w| **w == 0.0).count();
    eprintln!(
        "owlqn {fo} ({} zeros), ftrl {ff} ({} zeros)",
        zeros(&owlqn),
        zeros(&ftrl)
    );
    assert!(
        zeros(&owlqn) >= 10,
        "L1 should zero many of 30 weights: {}",
        zeros(&owlqn)
    );
    assert!(
        zeros(&ftrl) >= 10,
        "FTRL should zero weights too: {}",
        zeros(&ftrl)
    );
    assert!(ff >= fo - 1e-9 * fo.abs(), "FTRL beat OWL-QN: {ff} < {fo}");
    assert!((ff - fo) / fo < 1e-2, "FTRL {ff} vs OWL-QN {fo}");
}
