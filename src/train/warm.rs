//! Warm start: the parameters a run starts from, taken from a saved model.
//!
//! A model file's weights apply to *its* preprocessing: numeric inputs are
//! `(x − center) / scale` with the centers and scales of the data it was
//! trained on. A new run computes its own from its own data, so the saved
//! weights are carried over to represent the same function of the raw
//! inputs: `w' = w · scale' / scale` and the intercept gains
//! `w · (center' − center) / scale` for every numeric feature. Where the
//! preprocessing is the same (the same data), the weights are taken bit for
//! bit.
//!
//! Everything else must match: the model kind, the label, the classes in
//! order, the numeric features in order, the categorical columns and
//! `hash_bits`. A mismatch is a usage error (exit 2) naming the first
//! difference.

use std::path::{Path, PathBuf};

use crate::data::encode::FeatureSpec;
use crate::error::{Error, Result};
use crate::model::file::ModelFile;
use crate::model::Layout;
use crate::spec::{ModelKind, ModelSpec, NetworkSpec};

/// A saved model to start from, read once before the job starts.
#[derive(Debug, Clone)]
pub struct InitModel {
    /// The file, as given.
    pub path: PathBuf,
    /// Its contents.
    pub file: ModelFile,
    /// BLAKE3 of its bytes: processes of one job compare it.
    pub digest: String,
}

impl InitModel {
    /// Reads and checks the model file at `path` (exit 5 if it is not a
    /// usable model, as for `predict`).
    pub fn load(path: &Path) -> Result<InitModel> {
        let file = ModelFile::load(path)?;
        // The digest of what was parsed, in its canonical form: two
        // processes with the same weights agree whatever the whitespace.
        let json = file.to_json()?;
        Ok(InitModel {
            path: path.to_path_buf(),
            digest: blake3::hash(json.as_bytes()).to_hex().to_string(),
            file,
        })
    }

    /// The starting parameters for a run of `kind` over `spec` (its
    /// features, after the statistics scan), in that run's layout and
    /// preprocessing; a usage error naming the first difference if the
    /// saved model is for another problem.
    pub fn theta(&self, model: &ModelSpec, spec: &FeatureSpec) -> Result<Vec<f64>> {
        let kind = model.kind;
        let differ = |what: String| Error::Usage {
            option: "--init-model".into(),
            message: format!(
                "{} is a model for other features: {what}",
                self.path.display()
            ),
        };
        let saved = &self.file.features;
        if self.file.kind != kind {
            let name = |k: ModelKind| format!("{k:?}").to_lowercase();
            return Err(differ(format!(
                "its kind is {}, the pipeline's {}",
                name(self.file.kind),
                name(kind)
            )));
        }
        if saved.label != spec.label {
            return Err(differ(format!(
                "its label is '{}', the pipeline's '{}'",
                saved.label, spec.label
            )));
        }
        if saved.classes != spec.classes {
            return Err(differ(format!(
                "its classes are {}, the pipeline's {}",
                list(saved.classes.as_deref()),
                list(spec.classes.as_deref())
            )));
        }
        let names = |s: &FeatureSpec| s.numeric.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        first_difference("numeric feature", &names(saved), &names(spec)).map_err(differ)?;
        first_difference("categorical column", &saved.categorical, &spec.categorical)
            .map_err(differ)?;
        if !spec.categorical.is_empty() && saved.hash_bits != spec.hash_bits {
            return Err(differ(format!(
                "it hashes into 2^{} slots, the pipeline into 2^{}",
                saved.hash_bits, spec.hash_bits
            )));
        }
        // A numeric cross's slots scale with its numeric members as the
        // model sees them: a new scaling of one cannot be carried over.
        let moved = |name: &str| {
            let old = saved.numeric.iter().find(|f| f.name == name);
            let new = spec.numeric.iter().find(|f| f.name == name);
            match (old, new) {
                (Some(o), Some(n)) => {
                    o.center.to_bits() != n.center.to_bits()
                        || o.scale.to_bits() != n.scale.to_bits()
                }
                _ => false,
            }
        };
        if let Some(c) = spec.crosses.iter().find(|c| c.of.iter().any(|m| moved(m))) {
            return Err(differ(format!(
                "its cross '{}' scales by a numeric feature whose standardisation this data changes; warm starts of numeric crosses need data.standardize = false",
                c.name
            )));
        }
        match (&model.network, &self.file.network) {
            (None, None) => {}
            (Some(network), Some(_)) => return self.network_theta(network, spec),
            (Some(_), None) => {
                return Err(differ(
                    "it is a linear model, the pipeline a network (model.kind = \"mlp\")".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(differ(format!(
                    "it is a network, the pipeline a {} model",
                    kind.name()
                )))
            }
        }
        let model = self.file.to_model(&self.path)?;
        let layout = Layout::new(kind, spec);
        if model.layout != layout {
            return Err(differ(format!(
                "its parameters are laid out as {:?}, the pipeline's as {layout:?}",
                model.layout
            )));
        }
        let mut theta = model.theta;
        let width = layout.d + 1;
        for kk in 0..layout.k {
            let base = kk * width;
            for (j, (old, new)) in saved.numeric.iter().zip(&spec.numeric).enumerate() {
                if old.center.to_bits() == new.center.to_bits()
                    && old.scale.to_bits() == new.scale.to_bits()
                {
                    continue;
                }
                let w = theta[base + 1 + j];
                theta[base] += w * (new.center - old.center) / old.scale;
                theta[base + 1 + j] = w * new.scale / old.scale;
            }
        }
        if let Some(i) = theta.iter().position(|w| !w.is_finite()) {
            return Err(differ(format!(
                "parameter {i} is not finite once carried over to this data's scaling"
            )));
        }
        Ok(theta)
    }
}

impl InitModel {
    /// A saved network's parameters for a pipeline's network of the same
    /// shape (its features already checked): the first layer's numeric
    /// columns and biases carried over to this data's scaling, as a linear
    /// model's weights are, unit by unit.
    fn network_theta(&self, network: &NetworkSpec, spec: &FeatureSpec) -> Result<Vec<f64>> {
        let differ = |what: String| Error::Usage {
            option: "--init-model".into(),
            message: format!("{} is another network: {what}", self.path.display()),
        };
        let saved = self.file.to_network(&self.path)?;
        if saved.shape().hidden != network.hidden {
            return Err(differ(format!(
                "its hidden layers are {:?}, the pipeline's {:?}",
                saved.shape().hidden,
                network.hidden
            )));
        }
        if saved.activation() != network.activation {
            return Err(differ(format!(
                "its activation is {}, the pipeline's {}",
                saved.activation().name(),
                network.activation.name()
            )));
        }
        if let Some(h) = self.file.network.as_ref().and_then(|n| n.hashed_init) {
            if h.seed != network.seed {
                tracing::warn!(
                    saved_seed = h.seed,
                    seed = network.seed,
                    "the saved network's hashed columns started from another seed than this pipeline's model.seed: the model is the same, but its file will list every hashed column (set model.seed = {} to keep it small)",
                    h.seed
                );
            }
        }
        let (w_at, b_at, units, cols) = saved.layer_offsets(0);
        let mut theta = saved.params().to_vec();
        let old = &self.file.features.numeric;
        for (j, (o, n)) in old.iter().zip(&spec.numeric).enumerate() {
            if o.center.to_bits() == n.center.to_bits() && o.scale.to_bits() == n.scale.to_bits() {
                continue;
            }
            for u in 0..units {
                let w = theta[w_at + u * cols + j];
                theta[b_at + u] += w * (n.center - o.center) / o.scale;
                theta[w_at + u * cols + j] = w * n.scale / o.scale;
            }
        }
        if let Some(i) = theta.iter().position(|w| !w.is_finite()) {
            return Err(differ(format!(
                "parameter {i} is not finite once carried over to this data's scaling"
            )));
        }
        Ok(theta)
    }
}

/// `[a, b]`, or `none`.
fn list(v: Option<&[String]>) -> String {
    v.map_or_else(|| "none".into(), |v| format!("[{}]", v.join(", ")))
}

/// The first position where `saved` and `wanted` differ, as a message.
fn first_difference(what: &str, saved: &[String], wanted: &[String]) -> Result<(), String> {
    for (i, (a, b)) in saved.iter().zip(wanted).enumerate() {
        if a != b {
            return Err(format!("{what} {} is '{a}', the pipeline's '{b}'", i + 1));
        }
    }
    match saved.len().cmp(&wanted.len()) {
        std::cmp::Ordering::Less => Err(format!(
            "it has no {what} '{}' (it has {}, the pipeline {})",
            wanted[saved.len()],
            saved.len(),
            wanted.len()
        )),
        std::cmp::Ordering::Greater => Err(format!(
            "the pipeline has no {what} '{}' (it has {}, the model {})",
            saved[wanted.len()],
            wanted.len(),
            saved.len()
        )),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::encode::NumericFeature;
    use crate::model::file::TrainingSummary;
    use crate::model::LinearModel;
    use crate::spec::OnMissing;

    fn spec(numeric: &[(&str, f64, f64)], classes: Option<&[&str]>) -> FeatureSpec {
        FeatureSpec {
            label: "y".into(),
            numeric: numeric
                .iter()
                .map(|&(name, center, scale)| NumericFeature {
                    name: name.into(),
                    fill: 0.0,
                    center,
                    scale,
                })
                .collect(),
            categorical: Vec::new(),
            crosses: Vec::new(),
            hash_bits: 18,
            on_missing: OnMissing::Error,
            classes: classes.map(|c| c.iter().map(|s| s.to_string()).collect()),
            weight: None,
        }
    }

    /// A linear model of `kind` with no penalty.
    fn ms(kind: ModelKind) -> ModelSpec {
        ModelSpec {
            kind,
            l2: 0.0,
            l1: 0.0,
            fit_intercept: true,
            alpha: 0.0,
            var_smoothing: 0.0,
            network: None,
            class_weight: None,
        }
    }

    fn saved(kind: ModelKind, spec: &FeatureSpec, theta: Vec<f64>) -> InitModel {
        let model = LinearModel {
            kind,
            layout: Layout::new(kind, spec),
            theta,
        };
        InitModel {
            path: "saved.json".into(),
            file: ModelFile::new(&model, spec, TrainingSummary::default()),
            digest: String::new(),
        }
    }

    /// The margin of raw inputs `x` under `theta` and `spec`'s scaling.
    fn margins(theta: &[f64], spec: &FeatureSpec, x: &[f64], k: usize) -> Vec<f64> {
        let width = spec.numeric.len() + 1;
        (0..k)
            .map(|kk| {
                let b = &theta[kk * width..(kk + 1) * width];
                b[0] + spec
                    .numeric
                    .iter()
                    .zip(x)
                    .enumerate()
                    .map(|(j, (f, &v))| b[1 + j] * (v - f.center) / f.scale)
                    .sum::<f64>()
            })
            .collect()
    }

    /// New data has other means and deviations: the carried-over weights
    /// are the same function of the raw inputs.
    #[test]
    fn weights_keep_their_function_under_new_scaling() {
        let old = spec(
            &[("age", 38.6, 13.7), ("income", 5e4, 2e4)],
            Some(&["a", "b", "c"]),
        );
        let new = spec(
            &[("age", 41.0, 11.5), ("income", 6.1e4, 2.6e4)],
            Some(&["a", "b", "c"]),
        );
        let theta = vec![0.3, -1.2, 0.7, -0.1, 0.4, 0.05, 0.9, 2.0, -0.6];
        let init = saved(ModelKind::Softmax, &old, theta.clone());
        let carried = init.theta(&ms(ModelKind::Softmax), &new).unwrap();
        for x in [[20.0, 1e4], [38.6, 5e4], [70.0, 2.5e5]] {
            let want = margins(&theta, &old, &x, 3);
            let got = margins(&carried, &new, &x, 3);
            for (w, g) in want.iter().zip(&got) {
                assert!(
                    (w - g).abs() < 1e-12 * (1.0 + w.abs()),
                    "{want:?} vs {got:?}"
                );
            }
        }
    }

    #[test]
    fn the_same_scaling_takes_the_weights_bit_for_bit() {
        let s = spec(&[("a", 0.1, 0.3), ("b", -2.0, 7.0)], None);
        let theta = vec![0.1f64.sqrt(), 1.0 / 3.0, -1e-300];
        let init = saved(ModelKind::Logistic, &s, theta.clone());
        let got = init.theta(&ms(ModelKind::Logistic), &s).unwrap();
        assert_eq!(
            got.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
            theta.iter().map(|w| w.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_model_for_other_features_names_the_first_difference() {
        let s = spec(&[("a", 0.0, 1.0), ("b", 0.0, 1.0)], None);
        let init = saved(ModelKind::Logistic, &s, vec![0.0; 3]);
        let message = |kind: ModelKind, other: &FeatureSpec| {
            let e = init.theta(&ms(kind), other).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        };
        let renamed = spec(&[("a", 0.0, 1.0), ("c", 0.0, 1.0)], None);
        assert!(message(ModelKind::Logistic, &renamed)
            .contains("numeric feature 2 is 'b', the pipeline's 'c'"));
        let more = spec(&[("a", 0.0, 1.0), ("b", 0.0, 1.0), ("d", 0.0, 1.0)], None);
        assert!(message(ModelKind::Logistic, &more).contains("it has no numeric feature 'd'"));
        assert!(
            message(ModelKind::Linear, &s).contains("its kind is logistic, the pipeline's linear")
        );
        let mut labelled = s.clone();
        labelled.label = "z".into();
        assert!(message(ModelKind::Logistic, &labelled).contains("label is 'y'"));
        let mut classes = s.clone();
        classes.classes = Some(vec!["no".into(), "yes".into()]);
        assert!(message(ModelKind::Logistic, &classes).contains("classes are none"));
    }
}
