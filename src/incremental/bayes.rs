//! Naive Bayes from the per-class sums ([`super::normal::ClassSums`]):
//! the same estimates as scikit-learn's `GaussianNB` and `MultinomialNB`
//! (`fit_prior = True`), computed from exact integer sums and rounded
//! once per quantity.
//!
//! - priors `log(n_c / n)`;
//! - gaussian: per class and feature the mean and population variance,
//!   plus `ε = var_smoothing × max_j Var(x_j)` (the variance over every
//!   row);
//! - multinomial: `log θ_cj = ln(N_cj + α) − ln(N_c + α·d)` where `N_cj` is
//!   the class's total of feature `j` (or tokens in slot `j`), `N_c` their
//!   sum and `d` the number of features (numeric ones plus hashed slots).

use super::normal::{ClassSums, Normal};
use super::solve::Unsolvable;
use crate::data::encode::{check_classes, FeatureSpec};
use crate::model::bayes::NaiveBayes;
use crate::spec::{ModelKind, ModelSpec};

/// The classes present, in the order models list them: by value when
/// every label is a number, else by text (each as its rows spell it).
pub fn class_order(stats: &Normal) -> Vec<String> {
    let mut names: Vec<String> = stats.classes.keys().cloned().collect();
    let numeric: Option<Vec<f64>> = names.iter().map(|l| l.parse::<f64>().ok()).collect();
    if let Some(v) = numeric {
        let mut pairs: Vec<(f64, String)> = v.into_iter().zip(names).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        names = pairs.into_iter().map(|(_, n)| n).collect();
    }
    names
}

/// Fits a `model.kind` naive Bayes model to the rows of `stats`, with the
/// features of `draft`; returns the model and its feature spec (classes
/// set, values taken as they are).
pub fn fit(
    model: &ModelSpec,
    draft: &FeatureSpec,
    stats: &Normal,
) -> Result<(NaiveBayes, FeatureSpec), Unsolvable> {
    if stats.rows <= 0 {
        return Err(Unsolvable::NoRows);
    }
    let p = draft.numeric.len();
    let names = class_order(stats);
    // Labels that name one class twice ("1" and "1.0") are refused, as
    // everywhere classes are listed.
    check_classes(&names).map_err(|m| Unsolvable::Range(format!("the labels present: {m}")))?;
    let classes: Vec<&ClassSums> = names
        .iter()
        .map(|c| {
            stats.classes.get(c).ok_or_else(|| {
                Unsolvable::Range(format!("class '{c}' is not in the statistics' own form"))
            })
        })
        .collect::<Result<_, _>>()?;
    let counted: i64 = classes.iter().map(|c| c.rows).sum();
    if counted != stats.rows || classes.iter().any(|c| c.rows <= 0) {
        return Err(Unsolvable::Range(format!(
            "the class counts ({counted} rows) disagree with the rows present ({}): the state is damaged",
            stats.rows
        )));
    }
    if classes.len() < 2 {
        return Err(Unsolvable::Range(format!(
            "every row present has label '{}': naive Bayes needs at least two classes",
            names.first().map_or("", String::as_str)
        )));
    }
    if classes.len() > crate::data::encode::MAX_CLASSES {
        return Err(Unsolvable::Range(format!(
            "{} classes; at most {} are supported",
            classes.len(),
            crate::data::encode::MAX_CLASSES
        )));
    }
    let n = stats.rows as f64;
    let slots = NaiveBayes::slots_of(model.kind, draft);
    let w = NaiveBayes::width(model.kind, p, slots);
    let k = classes.len();
    crate::memory::check(
        (k as u64).saturating_mul(w as u64).saturating_mul(8),
        &format!("the naive Bayes model's {k} × {w} parameters"),
    )
    .map_err(Unsolvable::Range)?;
    let mut theta = vec![0.0; k * w];
    let mut unseen = vec![0.0; k];
    let mut epsilon = 0.0;
    match model.kind {
        ModelKind::GaussianNb => {
            // Every row's sums: the classes' added (exactly).
            let mut all = ClassSums::default();
            for c in &classes {
                all.plus(c);
            }
            let mut largest: f64 = 0.0;
            for (j, f) in draft.numeric.iter().enumerate() {
                let (_, var) = all.mean_var(p, j).unwrap_or((0.0, 0.0));
                if (var > 0.0 || all.has_small(j)) && var.sqrt() < 1.0 / 65_536.0 {
                    return Err(Unsolvable::Range(format!(
                        "'{}' varies by only {:e} (standard deviation) or holds values below 2^-16 that vary below it: below what exact sums resolve (values are held to 2^-40); rescale the column",
                        f.name,
                        var.sqrt()
                    )));
                }
                largest = largest.max(var);
            }
            epsilon = model.var_smoothing * largest;
            for (c, sums) in classes.iter().enumerate() {
                let b = &mut theta[c * w..(c + 1) * w];
                b[0] = (sums.rows as f64).ln() - n.ln();
                for j in 0..p {
                    let (mean, var) = sums.mean_var(p, j).unwrap_or((0.0, 0.0));
                    let var = var + epsilon;
                    if var.is_nan() || var <= 0.0 {
                        return Err(Unsolvable::Range(format!(
                            "feature '{}' is constant within class '{}' and var_smoothing adds nothing (every feature is constant, or model.var_smoothing = 0): its density is undefined; drop the column or set model.var_smoothing > 0",
                            draft.numeric[j].name, names[c]
                        )));
                    }
                    b[1 + j] = mean;
                    b[1 + p + j] = var;
                }
            }
        }
        _ => {
            let alpha = model.alpha;
            let d = (p + slots) as f64;
            for (c, sums) in classes.iter().enumerate() {
                let b = &mut theta[c * w..(c + 1) * w];
                b[0] = (sums.rows as f64).ln() - n.ln();
                let total = sums.grand_total(p);
                let norm = (total + alpha * d).ln();
                for j in 0..p {
                    let count = sums.total(p, j);
                    if count < 0.0 {
                        return Err(Unsolvable::Range(format!(
                            "feature '{}' sums to {count:e} over class '{}': multinomial_nb takes counts (values ≥ 0)",
                            draft.numeric[j].name, names[c]
                        )));
                    }
                    b[1 + j] = (count + alpha).ln() - norm;
                }
                unseen[c] = alpha.ln() - norm;
                if slots > 0 {
                    b[1 + p..].iter_mut().for_each(|x| *x = unseen[c]);
                    for (&s, &count) in &sums.slots {
                        if count < 0 || s as usize >= slots {
                            return Err(Unsolvable::Range(format!(
                                "hashed slot {s} of class '{}' holds {count} tokens: the state is damaged",
                                names[c]
                            )));
                        }
                        b[1 + p + s as usize] = (count as f64 + alpha).ln() - norm;
                    }
                }
            }
        }
    }
    if theta.iter().any(|x| !x.is_finite()) {
        return Err(Unsolvable::Range(
            "a parameter is not finite (values too large for the model's arithmetic)".into(),
        ));
    }
    let mut spec = draft.clone();
    for f in &mut spec.numeric {
        f.center = 0.0;
        f.scale = 1.0;
    }
    spec.classes = Some(names);
    Ok((
        NaiveBayes {
            kind: model.kind,
            k,
            p,
            slots,
            theta,
            class_rows: classes.iter().map(|c| c.rows as u64).collect(),
            unseen,
            alpha: model.alpha,
            var_smoothing: model.var_smoothing,
            epsilon,
        },
        spec,
    ))
}
