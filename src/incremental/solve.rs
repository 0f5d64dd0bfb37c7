//! Ridge regression from its sufficient statistics: the normal equations,
//! solved by Cholesky.
//!
//! The objective is the one every tidemill optimizer minimises for
//! `model.kind = "linear"`: `(1/2n)·Σ(y − b − wᵀz)² + (l2/2)·‖w‖²`, with
//! `z = (x − center) / scale` (the mean and population standard deviation
//! of the rows when standardising, else 0 and 1) and an unpenalised
//! intercept `b`. With the intercept it is eliminated:
//! `(Szz/n − μ μᵀ + l2·I) w = Szy/n − μ ȳ`, `b = ȳ − μᵀw`, where
//! `μ = Σz/n`; without it, `(Szz/n + l2·I) w = Szy/n`. Every quantity is
//! taken from the exact sums of [`Normal`], so the solution depends on the
//! rows present only, never on their order or on the workers.

use super::normal::{width, Normal};

/// A solved model on the standardised scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// Per feature: subtracted before scaling.
    pub center: Vec<f64>,
    /// Per feature: the divisor (1 for a constant feature).
    pub scale: Vec<f64>,
    /// `[intercept, w_1 … w_p]`.
    pub theta: Vec<f64>,
    /// The objective at `theta` (from the statistics: rounding in the last
    /// digits where the fit is near perfect).
    pub objective: f64,
}

/// Why no solution.
#[derive(Debug, Clone, PartialEq)]
pub enum Unsolvable {
    /// No rows left.
    NoRows,
    /// The system is singular: this feature is a linear combination of
    /// those before it (only without an L2 penalty).
    Collinear(usize),
}

/// How the features are prepared and penalised.
#[derive(Debug, Clone, Copy)]
pub struct Ridge {
    /// L2 penalty.
    pub l2: f64,
    /// Fit an intercept.
    pub fit_intercept: bool,
    /// Centre and scale the features by the rows' mean and standard deviation.
    pub standardize: bool,
}

/// Solves ridge regression for `p` features from `stats`.
pub fn solve(stats: &Normal, p: usize, ridge: Ridge) -> Result<Solution, Unsolvable> {
    if stats.rows <= 0 || stats.sums.len() != width(p) {
        return Err(Unsolvable::NoRows);
    }
    let n = stats.rows as f64;
    let v = |k: usize| stats.value(k);
    let (sy, syy) = (v(0), v(1));
    let ybar = sy / n;
    let sx = |j: usize| v(2 + j);
    let sxy = |j: usize| v(2 + p + j);
    let upper = |i: usize, j: usize| {
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        // Row i of the upper triangle starts after rows 0..i.
        2 + 2 * p + i * p - i * (i.saturating_sub(1)) / 2 - i + j
    };
    let sxx = |i: usize, j: usize| v(upper(i, j));
    let mean: Vec<f64> = (0..p).map(|j| sx(j) / n).collect();
    let (center, scale): (Vec<f64>, Vec<f64>) = if ridge.standardize {
        (0..p)
            .map(|j| {
                let var = (sxx(j, j) / n - mean[j] * mean[j]).max(0.0);
                let sd = var.sqrt();
                (mean[j], if sd > 0.0 { sd } else { 1.0 })
            })
            .unzip()
    } else {
        (vec![0.0; p], vec![1.0; p])
    };
    // Second moments of z (Szz/n), its mean μ and Szy/n.
    let mu: Vec<f64> = (0..p).map(|j| (mean[j] - center[j]) / scale[j]).collect();
    let mut a = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..p {
            let m =
                sxx(i, j) / n - center[i] * mean[j] - mean[i] * center[j] + center[i] * center[j];
            a[i * p + j] = m / (scale[i] * scale[j]);
        }
    }
    let mut b: Vec<f64> = (0..p)
        .map(|j| (sxy(j) / n - center[j] * ybar) / scale[j])
        .collect();
    if ridge.fit_intercept {
        for i in 0..p {
            for j in 0..p {
                a[i * p + j] -= mu[i] * mu[j];
            }
            b[i] -= mu[i] * ybar;
        }
    }
    for i in 0..p {
        a[i * p + i] += ridge.l2;
    }
    let w = cholesky_solve(a, b, p)?;
    let intercept = if ridge.fit_intercept {
        ybar - mu.iter().zip(&w).map(|(m, w)| m * w).sum::<f64>()
    } else {
        0.0
    };
    let mut theta = Vec::with_capacity(p + 1);
    theta.push(intercept);
    theta.extend_from_slice(&w);
    // Σ(y − θᵀz̃)² = Σy² − 2θᵀΣz̃y + θᵀ(Σz̃z̃ᵀ)θ, z̃ = [1, z].
    let zy = |j: usize| (sxy(j) - center[j] * sy) / scale[j];
    let zz = |i: usize, j: usize| {
        (sxx(i, j) - center[i] * sx(j) - sx(i) * center[j] + n * center[i] * center[j])
            / (scale[i] * scale[j])
    };
    let zsum = |j: usize| (sx(j) - n * center[j]) / scale[j];
    let mut quad = n * intercept * intercept;
    let mut cross = intercept * sy;
    for i in 0..p {
        cross += w[i] * zy(i);
        quad += 2.0 * intercept * w[i] * zsum(i);
        for j in 0..p {
            quad += w[i] * w[j] * zz(i, j);
        }
    }
    let rss = (syy - 2.0 * cross + quad).max(0.0);
    let objective = rss / (2.0 * n) + 0.5 * ridge.l2 * w.iter().map(|w| w * w).sum::<f64>();
    Ok(Solution {
        center,
        scale,
        theta,
        objective,
    })
}

/// Solves `A x = b` for a symmetric positive definite `p × p` matrix `A`
/// (row-major) by Cholesky factorisation `A = L Lᵀ`.
fn cholesky_solve(mut a: Vec<f64>, mut b: Vec<f64>, p: usize) -> Result<Vec<f64>, Unsolvable> {
    let largest = (0..p).map(|i| a[i * p + i].abs()).fold(0.0, f64::max);
    let tiny = largest * 1e-13;
    for j in 0..p {
        let mut d = a[j * p + j];
        for k in 0..j {
            d -= a[j * p + k] * a[j * p + k];
        }
        if d.is_nan() || d <= tiny {
            return Err(Unsolvable::Collinear(j));
        }
        let d = d.sqrt();
        a[j * p + j] = d;
        for i in j + 1..p {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= a[i * p + k] * a[j * p + k];
            }
            a[i * p + j] = s / d;
        }
    }
    // L y = b, then Lᵀ x = y.
    for i in 0..p {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * p + k] * b[k];
        }
        b[i] = s / a[i * p + i];
    }
    for i in (0..p).rev() {
        let mut s = b[i];
        for k in i + 1..p {
            s -= a[k * p + i] * b[k];
        }
        b[i] = s / a[i * p + i];
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incremental::normal::KeyDigest;

    /// The upper-triangle index agrees with the order `add_row` fills.
    #[test]
    fn upper_index_matches_layout() {
        let p = 4;
        let mut n = Normal::zero_of(p);
        let x = [2.0, 3.0, 5.0, 7.0];
        n.add_row(&KeyDigest::of("a"), &x, 0.0).unwrap();
        let mut k = 2 + 2 * p;
        for i in 0..p {
            for j in i..p {
                let idx = 2 + 2 * p + i * p - i * (i.saturating_sub(1)) / 2 - i + j;
                assert_eq!(idx, k, "({i},{j})");
                assert_eq!(n.value(idx), x[i] * x[j]);
                k += 1;
            }
        }
    }

    /// An exactly linear relation is recovered; the objective is zero.
    #[test]
    fn recovers_a_linear_relation() {
        let mut n = Normal::zero_of(2);
        for i in 0..50 {
            let (a, b) = (i as f64, ((i * 7) % 11) as f64);
            n.add_row(&KeyDigest::of(&i.to_string()), &[a, b], 3.0 + 2.0 * a - b)
                .unwrap();
        }
        for standardize in [false, true] {
            let s = solve(
                &n,
                2,
                Ridge {
                    l2: 0.0,
                    fit_intercept: true,
                    standardize,
                },
            )
            .unwrap();
            let raw: Vec<f64> = (0..2).map(|j| s.theta[1 + j] / s.scale[j]).collect();
            let b = s.theta[0] - (0..2).map(|j| raw[j] * s.center[j]).sum::<f64>();
            assert!((raw[0] - 2.0).abs() < 1e-9 && (raw[1] + 1.0).abs() < 1e-9);
            assert!((b - 3.0).abs() < 1e-8, "{b}");
            assert!(s.objective < 1e-9);
        }
    }

    #[test]
    fn collinear_features_without_penalty_are_refused() {
        let mut n = Normal::zero_of(2);
        for i in 0..10 {
            let a = i as f64;
            n.add_row(&KeyDigest::of(&i.to_string()), &[a, 2.0 * a], a)
                .unwrap();
        }
        let ridge = Ridge {
            l2: 0.0,
            fit_intercept: true,
            standardize: false,
        };
        assert_eq!(solve(&n, 2, ridge), Err(Unsolvable::Collinear(1)));
        assert!(solve(&n, 2, Ridge { l2: 0.1, ..ridge }).is_ok());
    }
}
