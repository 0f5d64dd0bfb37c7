//! Losses of the linear family, as functions of the margins.
//!
//! The objective tidemill minimises is
//! `mean(loss) + l2/2·‖w‖² + l1·‖w‖₁` (intercepts not penalised), with the
//! squared loss written `½(y − ŷ)²` (the Spark MLlib / glmnet convention).

use crate::spec::ModelKind;

/// `log(1 + e^m)` without overflow.
pub fn softplus(m: f64) -> f64 {
    if m > 0.0 {
        m + (-m).exp().ln_1p()
    } else {
        m.exp().ln_1p()
    }
}

/// The logistic function.
pub fn sigmoid(m: f64) -> f64 {
    if m >= 0.0 {
        1.0 / (1.0 + (-m).exp())
    } else {
        let e = m.exp();
        e / (1.0 + e)
    }
}

/// The logistic loss of margin `m` for label `y` (0/1) and the positive
/// class's probability, [`sigmoid`]`(m)`: both from one `exp(−|m|)`, to
/// the bits of [`softplus`] and [`sigmoid`] (a NaN margin gives a NaN
/// whose sign may differ from `sigmoid`'s).
#[inline]
pub fn logistic(m: f64, y: f64) -> (f64, f64) {
    let e = (-m.abs()).exp();
    let (sig, soft) = if m > 0.0 {
        (1.0 / (1.0 + e), m + e.ln_1p())
    } else if m == 0.0 {
        (1.0 / (1.0 + e), e.ln_1p())
    } else {
        (e / (1.0 + e), e.ln_1p())
    };
    (soft - y * m, sig)
}

/// Loss of one row and its derivative with respect to each margin.
///
/// `y` is the target (regression), 0/1 (logistic, hinge) or the class index
/// (softmax). `dm` receives `∂loss/∂margin_k`.
pub fn loss_and_grad(kind: ModelKind, margins: &[f64], y: f64, dm: &mut [f64]) -> f64 {
    match kind {
        ModelKind::Linear => {
            let r = margins[0] - y;
            dm[0] = r;
            0.5 * r * r
        }
        ModelKind::Logistic => {
            let (loss, sig) = logistic(margins[0], y);
            dm[0] = sig - y;
            loss
        }
        ModelKind::Hinge => {
            let s = 2.0 * y - 1.0;
            let z = s * margins[0];
            if z < 1.0 {
                dm[0] = -s;
                1.0 - z
            } else {
                dm[0] = 0.0;
                0.0
            }
        }
        // A naive Bayes model's margins are joint log-likelihoods: their
        // softmax is the posterior, its log loss this one.
        ModelKind::Softmax | ModelKind::GaussianNb | ModelKind::MultinomialNb => {
            let max = margins.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut z = 0.0;
            for (d, &m) in dm.iter_mut().zip(margins) {
                *d = (m - max).exp();
                z += *d;
            }
            let k = y as usize;
            for d in dm.iter_mut() {
                *d /= z;
            }
            dm[k] -= 1.0;
            -(margins[k] - max - z.ln())
        }
    }
}

/// Loss of one row only.
pub fn loss(kind: ModelKind, margins: &[f64], y: f64) -> f64 {
    let mut scratch = [0.0; 1];
    match kind.prediction_kind() {
        ModelKind::Softmax => {
            let max = margins.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = margins.iter().map(|m| (m - max).exp()).sum();
            -(margins[y as usize] - max - z.ln())
        }
        _ => loss_and_grad(kind, margins, y, &mut scratch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The logistic loss and gradient share one exponential and keep the
    /// bits of `softplus` and `sigmoid`.
    #[test]
    fn logistic_loss_and_gradient_are_the_bits_of_softplus_and_sigmoid() {
        let mut margins = vec![
            0.0,
            -0.0,
            f64::NAN,
            1e-300,
            -1e-300,
            36.7,
            -36.7,
            745.0,
            -745.0,
            1e308,
            -1e308,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        margins.extend((-4000..=4000).map(|i| f64::from(i) * 0.0123));
        for m in margins {
            for y in [0.0, 1.0] {
                let mut dm = [0.0];
                let l = loss_and_grad(ModelKind::Logistic, &[m], y, &mut dm);
                let (want_l, want_g) = (softplus(m) - y * m, sigmoid(m) - y);
                // (A NaN's sign bit is not part of its value.)
                let same =
                    |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                assert!(same(l, want_l), "loss at {m}, y = {y}: {l} vs {want_l}");
                assert!(
                    same(dm[0], want_g),
                    "gradient at {m}, y = {y}: {} vs {want_g}",
                    dm[0]
                );
            }
        }
    }

    fn numeric_check(kind: ModelKind, margins: &[f64], y: f64) {
        let mut dm = vec![0.0; margins.len()];
        loss_and_grad(kind, margins, y, &mut dm);
        for k in 0..margins.len() {
            let h = 1e-6;
            let mut a = margins.to_vec();
            let mut b = margins.to_vec();
            a[k] += h;
            b[k] -= h;
            let fd = (loss(kind, &a, y) - loss(kind, &b, y)) / (2.0 * h);
            assert!(
                (fd - dm[k]).abs() < 1e-6,
                "{kind:?} k={k}: {fd} vs {}",
                dm[k]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        numeric_check(ModelKind::Linear, &[0.3], 1.7);
        numeric_check(ModelKind::Logistic, &[0.3], 1.0);
        numeric_check(ModelKind::Logistic, &[-40.0], 0.0);
        numeric_check(ModelKind::Hinge, &[0.3], 1.0);
        numeric_check(ModelKind::Softmax, &[0.3, -1.0, 2.0], 2.0);
    }

    #[test]
    fn logistic_is_stable_at_extremes() {
        assert!(softplus(1000.0).is_finite());
        assert_eq!(softplus(-1000.0), 0.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-15);
    }
}
