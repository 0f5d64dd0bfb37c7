//! Ridge regression from its sufficient statistics: the normal equations,
//! solved by Cholesky.
//!
//! The objective is the one every tidemill optimizer minimises for
//! `model.kind = "linear"`: `(1/2n)·Σ(y − b − wᵀz)² + (l2/2)·‖w‖²`, with
//! `z = (x − center) / scale` (the mean and population standard deviation
//! of the rows when standardising, else 0 and 1) and an unpenalised
//! intercept `b`. Everything is taken from the exact centred moments of
//! [`Normal::moments`] (covariances `C`, `c_xy`, `c_yy` and means `m`, `ȳ`),
//! with `D = diag(scale)` and `μ = D⁻¹(m − center)`:
//!
//! - with the intercept, `(D⁻¹CD⁻¹ + l2·I) w = D⁻¹c_xy`, `b = ȳ − μᵀw`;
//! - without, `(D⁻¹(C + (m−c)(m−c)ᵀ)D⁻¹ + l2·I) w = D⁻¹(c_xy + (m−c)ȳ)`.
//!
//! So the solution depends on the rows present only, never on their order
//! or on the workers, and no sum of large numbers is ever subtracted from
//! another in floating point.

use super::normal::Normal;

/// A solved model on the standardised scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// Per feature: subtracted before scaling.
    pub center: Vec<f64>,
    /// Per feature: the divisor (1 for a constant feature).
    pub scale: Vec<f64>,
    /// `[intercept, w_1 … w_p]`.
    pub theta: Vec<f64>,
    /// The objective at `theta`.
    pub objective: f64,
}

/// Why no solution.
#[derive(Debug, Clone, PartialEq)]
pub enum Unsolvable {
    /// No rows left.
    NoRows,
    /// The statistics cannot be solved from exactly (the reason).
    Range(String),
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

/// Solves ridge regression for `p` features from `stats`; `names(j)`
/// names value `j` (feature `j < p`, the label at `p`) in messages.
pub fn solve(
    stats: &Normal,
    p: usize,
    ridge: Ridge,
    names: &dyn Fn(usize) -> String,
) -> Result<Solution, Unsolvable> {
    if stats.rows <= 0 {
        return Err(Unsolvable::NoRows);
    }
    let mo = stats.check(p, names).map_err(Unsolvable::Range)?;
    let m = p + 1;
    let cov = |i: usize, j: usize| mo.cov[i * m + j];
    let ybar = mo.mean[p];
    let (center, scale): (Vec<f64>, Vec<f64>) = if ridge.standardize {
        (0..p)
            .map(|j| {
                let sd = cov(j, j).max(0.0).sqrt();
                (mo.mean[j], if sd > 0.0 { sd } else { 1.0 })
            })
            .unzip()
    } else {
        (vec![0.0; p], vec![1.0; p])
    };
    // The offsets of the means from the centres (0 when standardising).
    let off: Vec<f64> = (0..p).map(|j| mo.mean[j] - center[j]).collect();
    let mu: Vec<f64> = (0..p).map(|j| off[j] / scale[j]).collect();
    // E[zzᵀ] − (intercept ? μμᵀ : 0), and E[zy] − (intercept ? μȳ : 0).
    let mut a = vec![0.0; p * p];
    let mut b = vec![0.0; p];
    for i in 0..p {
        for j in 0..p {
            let mut v = cov(i, j);
            if !ridge.fit_intercept {
                v += off[i] * off[j];
            }
            a[i * p + j] = v / (scale[i] * scale[j]);
        }
        let mut v = cov(i, p);
        if !ridge.fit_intercept {
            v += off[i] * ybar;
        }
        b[i] = v / scale[i];
    }
    let quad = a.clone();
    let lin = b.clone();
    for i in 0..p {
        a[i * p + i] += ridge.l2;
    }
    let w = cholesky_solve(a, b, p)?;
    let intercept = if ridge.fit_intercept {
        ybar - mu.iter().zip(&w).map(|(m, w)| m * w).sum::<f64>()
    } else {
        0.0
    };
    // rss/n = E[y²] − 2wᵀE[zy] + wᵀE[zzᵀ]w, centred with the intercept.
    let yy = if ridge.fit_intercept {
        cov(p, p)
    } else {
        cov(p, p) + ybar * ybar
    };
    let mut rss = yy;
    for i in 0..p {
        rss -= 2.0 * w[i] * lin[i];
        for j in 0..p {
            rss += w[i] * w[j] * quad[i * p + j];
        }
    }
    let objective = 0.5 * rss.max(0.0) + 0.5 * ridge.l2 * w.iter().map(|w| w * w).sum::<f64>();
    let mut theta = Vec::with_capacity(p + 1);
    theta.push(intercept);
    theta.extend_from_slice(&w);
    Ok(Solution {
        center,
        scale,
        theta,
        objective,
    })
}

/// Solves `A x = b` for a symmetric positive definite `p × p` matrix `A`
/// (row-major) by Cholesky factorisation `A = L Lᵀ`.
fn cholesky_solve(a: Vec<f64>, b: Vec<f64>, p: usize) -> Result<Vec<f64>, Unsolvable> {
    // A pivot that lost all but 1e-13 of its diagonal entry is zero: the
    // column lies in the span of those before it.
    let diagonal: Vec<f64> = (0..p).map(|i| a[i * p + i]).collect();
    let l = factor(a, p, &|j| diagonal[j].abs() * 1e-13).map_err(Unsolvable::Collinear)?;
    Ok(factor_solve(&l, b, p))
}

/// The lower triangle `L` of `A = L Lᵀ` (row-major `p × p`, factorised in
/// place), or the first column whose pivot is NaN or at most `floor(j)`.
pub(crate) fn factor(
    mut a: Vec<f64>,
    p: usize,
    floor: &dyn Fn(usize) -> f64,
) -> Result<Vec<f64>, usize> {
    for j in 0..p {
        let mut d = a[j * p + j];
        for k in 0..j {
            d -= a[j * p + k] * a[j * p + k];
        }
        if d.is_nan() || d <= floor(j) {
            return Err(j);
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
    Ok(a)
}

/// Solves `L Lᵀ x = b` given the lower triangle `L` (row-major `p × p`,
/// the upper part ignored): `L y = b`, then `Lᵀ x = y`.
pub(crate) fn factor_solve(l: &[f64], mut b: Vec<f64>, p: usize) -> Vec<f64> {
    for i in 0..p {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * p + k] * b[k];
        }
        b[i] = s / l[i * p + i];
    }
    for i in (0..p).rev() {
        let mut s = b[i];
        for k in i + 1..p {
            s -= l[k * p + i] * b[k];
        }
        b[i] = s / l[i * p + i];
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incremental::normal::KeyDigest;

    fn name(j: usize) -> String {
        format!("c{j}")
    }

    /// An exactly linear relation is recovered; the objective is zero.
    #[test]
    fn recovers_a_linear_relation() {
        let mut n = Normal::zero_of(2);
        for i in 0..50 {
            let (a, b) = (1.7e9 + i as f64, ((i * 7) % 11) as f64);
            n.add_row(
                &KeyDigest::of(&i.to_string()),
                &[a, b],
                3.0 + 2.0 * (a - 1.7e9) - b,
            )
            .unwrap();
        }
        for (standardize, fit_intercept) in [(false, true), (true, true), (true, false)] {
            let s = solve(
                &n,
                2,
                Ridge {
                    l2: 0.0,
                    fit_intercept,
                    standardize,
                },
                &name,
            )
            .unwrap();
            let raw: Vec<f64> = (0..2).map(|j| s.theta[1 + j] / s.scale[j]).collect();
            if fit_intercept {
                assert!(
                    (raw[0] - 2.0).abs() < 1e-9 && (raw[1] + 1.0).abs() < 1e-9,
                    "{raw:?}"
                );
                assert!(s.objective < 1e-9, "{}", s.objective);
            }
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
        assert_eq!(solve(&n, 2, ridge, &name), Err(Unsolvable::Collinear(1)));
        assert!(solve(&n, 2, Ridge { l2: 0.1, ..ridge }, &name).is_ok());
    }

    /// A constant column gets scale 1 and weight 0.
    #[test]
    fn a_constant_column_is_constant() {
        let mut n = Normal::zero_of(2);
        for i in 0..100 {
            n.add_row(&KeyDigest::of(&i.to_string()), &[i as f64, 0.7], i as f64)
                .unwrap();
        }
        let ridge = Ridge {
            l2: 0.01,
            fit_intercept: true,
            standardize: true,
        };
        let s = solve(&n, 2, ridge, &name).unwrap();
        assert_eq!(s.scale[1], 1.0);
        assert_eq!(s.theta[2], 0.0);
    }
}
