//! A network's section of the model file (format version 2): its
//! layers, each with a name, a shape and its values, so that `predict`
//! rebuilds the network exactly. See `docs/model-format.md`.
//!
//! The first layer's hashed columns (one per hashed slot, one weight per
//! unit) start from a function of the seed ([`super::mlp::hashed_init`]);
//! the file lists only the columns that differ from it, so a network over
//! a wide hashed space costs what training touched, as a linear model's
//! hashed weights do.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::file::{ModelFile, TrainingSummary, FORMAT};
use super::mlp::{hashed_init, Activation, Mlp, Shape};
use crate::data::encode::FeatureSpec;
use crate::error::{Error, Result};
use crate::spec::{ModelKind, MAX_HIDDEN_LAYERS, MAX_HIDDEN_UNITS};

/// `"network"`: the layers from the input up, the last one the head's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// The hidden layers' activation (`relu` or `tanh`).
    pub activation: Activation,
    /// How the first layer's hashed columns started (absent without
    /// categorical columns).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hashed_init: Option<HashedInit>,
    /// `hidden_1`, …, `hidden_L`, then `output`.
    pub layers: Vec<LayerSection>,
}

/// The start of the first layer's hashed columns: weight `(unit, slot)`
/// is `hashed_init(seed, unit, slot, bound)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HashedInit {
    /// The network's seed.
    pub seed: u64,
    /// The uniform's half-width.
    pub bound: f64,
}

/// One dense layer: `z = W·a + b`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LayerSection {
    /// `hidden_1`, … or `output`.
    pub name: String,
    /// `[units, inputs]`; the first layer's inputs are the numeric
    /// features, in `features.numeric` order (its hashed columns are in
    /// `hashed`).
    pub shape: [usize; 2],
    /// `units` rows of `inputs` weights.
    pub weights: Vec<Vec<f64>>,
    /// One per unit.
    pub biases: Vec<f64>,
    /// First layer only: the hashed columns that differ from their start,
    /// by slot, each with one weight per unit.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hashed: Option<Vec<HashedColumn>>,
}

/// A hashed slot's column of the first layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HashedColumn {
    /// The slot, below `2^features.hash_bits`.
    pub slot: usize,
    /// One weight per unit.
    pub weights: Vec<f64>,
}

/// The layer names, from the input up.
fn layer_name(i: usize, layers: usize) -> String {
    if i + 1 == layers {
        "output".into()
    } else {
        format!("hidden_{}", i + 1)
    }
}

impl NetworkSection {
    /// The parameters the section describes, after checking its shapes
    /// chain from the features to the head's outputs.
    pub fn param_count(
        &self,
        kind: ModelKind,
        features: &FeatureSpec,
    ) -> std::result::Result<usize, String> {
        Ok(self.shape(kind, features)?.len())
    }

    /// The network's widths, checked layer by layer.
    fn shape(&self, kind: ModelKind, features: &FeatureSpec) -> std::result::Result<Shape, String> {
        let n = self.layers.len();
        if !(2..=MAX_HIDDEN_LAYERS + 1).contains(&n) {
            return Err(format!(
                "network.layers has {n} layers; a network has 1 to {MAX_HIDDEN_LAYERS} hidden layers and an output layer"
            ));
        }
        let numeric = features.numeric.len();
        let outputs = match kind {
            ModelKind::Softmax => features.classes.as_ref().map_or(0, Vec::len),
            _ => 1,
        };
        let mut inputs = numeric;
        let mut hidden = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let name = layer_name(i, n);
            if l.name != name {
                return Err(format!(
                    "network.layers[{i}] is named '{}'; layer {i} is '{name}'",
                    l.name
                ));
            }
            let [units, cols] = l.shape;
            if cols != inputs {
                return Err(format!(
                    "network layer '{name}' has shape [{units}, {cols}]: its inputs are {inputs} ({})",
                    if i == 0 {
                        "the numeric features".to_string()
                    } else {
                        format!("the units of '{}'", layer_name(i - 1, n))
                    }
                ));
            }
            if i + 1 == n {
                if units != outputs {
                    return Err(format!(
                        "network layer 'output' has {units} units; a {} head has {outputs}",
                        kind.name()
                    ));
                }
            } else if !(1..=MAX_HIDDEN_UNITS).contains(&units) {
                return Err(format!(
                    "network layer '{name}' has {units} units; a layer has 1 to {MAX_HIDDEN_UNITS}"
                ));
            } else {
                hidden.push(units);
            }
            if i > 0 && l.hashed.is_some() {
                return Err(format!(
                    "network layer '{name}' has hashed columns: only the first layer reads the hashed slots"
                ));
            }
            inputs = units;
        }
        Ok(Shape {
            numeric,
            hashed: features.dim() - numeric,
            hidden,
            outputs,
            hashed_per_row: features.categorical.len(),
        })
    }
}

impl ModelFile {
    /// Builds the file content of a trained network.
    pub fn of_network(model: &Mlp, features: &FeatureSpec, training: TrainingSummary) -> ModelFile {
        let shape = model.shape();
        let theta = model.params();
        let n = model.layer_count();
        let layers = (0..n)
            .map(|i| {
                let (w, b, units, cols) = model.layer(i);
                let inputs = if i == 0 { shape.numeric } else { cols };
                let weights = (0..units)
                    .map(|r| w[r * cols..r * cols + inputs].to_vec())
                    .collect();
                let hashed = (i == 0 && shape.hashed > 0).then(|| {
                    let bound = model.hashed_bound();
                    (0..shape.hashed)
                        .filter(|&slot| {
                            (0..units).any(|r| {
                                w[r * cols + inputs + slot]
                                    != hashed_init(model.seed(), r, slot, bound)
                            })
                        })
                        .map(|slot| HashedColumn {
                            slot,
                            weights: (0..units).map(|r| w[r * cols + inputs + slot]).collect(),
                        })
                        .collect()
                });
                LayerSection {
                    name: layer_name(i, n),
                    shape: [units, inputs],
                    weights,
                    biases: b.to_vec(),
                    hashed,
                }
            })
            .collect();
        debug_assert_eq!(theta.len(), shape.len());
        ModelFile {
            format: FORMAT.into(),
            version: crate::model::file::version_for(features, 2),
            kind: model.kind(),
            features: features.clone(),
            intercept: None,
            coefficients: None,
            hashed: None,
            training,
            stream: None,
            naive_bayes: None,
            network: Some(NetworkSection {
                activation: model.activation(),
                hashed_init: (shape.hashed > 0).then(|| HashedInit {
                    seed: model.seed(),
                    bound: model.hashed_bound(),
                }),
                layers,
            }),
        }
    }

    /// Which sections the file has, for its kind: a network's file has
    /// `network` only, any other `intercept` and `coefficients`.
    pub(super) fn check_sections(&self) -> std::result::Result<(), String> {
        let Some(_) = &self.network else {
            for (key, present) in [
                ("intercept", self.intercept.is_some()),
                ("coefficients", self.coefficients.is_some()),
            ] {
                if !present {
                    return Err(format!("missing \"{key}\""));
                }
            }
            return Ok(());
        };
        if self.version < 2 {
            return Err(format!(
                "a \"network\" section needs format version 2; the file says {}",
                self.version
            ));
        }
        if !matches!(
            self.kind,
            ModelKind::Linear | ModelKind::Logistic | ModelKind::Softmax
        ) {
            return Err(format!(
                "a network's head is linear, logistic or softmax, not {}",
                self.kind.name()
            ));
        }
        for (key, present) in [
            ("intercept", self.intercept.is_some()),
            ("coefficients", self.coefficients.is_some()),
            ("hashed", self.hashed.is_some()),
            ("naive_bayes", self.naive_bayes.is_some()),
        ] {
            if present {
                return Err(format!(
                    "a network's file has no \"{key}\": its weights are in \"network\""
                ));
            }
        }
        Ok(())
    }

    /// The in-memory network: every layer's shape checked against the
    /// features and the head, every value where the layout puts it.
    pub fn to_network(&self, path: &Path) -> Result<Mlp> {
        let bad = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let section = self
            .network
            .as_ref()
            .ok_or_else(|| bad("not a network: the file has no \"network\" section".into()))?;
        let f = &self.features;
        let shape = section.shape(self.kind, f).map_err(bad)?;
        let seed = section.hashed_init.map_or(0, |h| h.seed);
        let bound = shape.hashed_bound(section.activation);
        match section.hashed_init {
            Some(_) if shape.hashed == 0 => {
                return Err(bad("network.hashed_init without categorical columns".into()))
            }
            Some(h) if h.bound != bound => {
                return Err(bad(format!(
                    "network.hashed_init.bound is {}; this network's is {bound}",
                    h.bound
                )))
            }
            None if shape.hashed > 0 => {
                return Err(bad(
                    "a network over categorical columns needs network.hashed_init".into(),
                ))
            }
            _ => {}
        }
        if shape.hashed == 0 {
            if let Some(l) = section.layers.iter().find(|l| l.hashed.is_some()) {
                return Err(bad(format!(
                    "network layer '{}' has hashed columns, and the features no categorical column",
                    l.name
                )));
            }
        }
        // Every length first, before anything the size of the network is
        // allocated.
        let places = shape.layer_places();
        for (l, &(_, _, units, _)) in section.layers.iter().zip(&places) {
            let inputs = l.shape[1];
            if l.weights.len() != units {
                return Err(bad(format!(
                    "network layer '{}' has {} rows of weights; its shape says {units}",
                    l.name,
                    l.weights.len()
                )));
            }
            if let Some((r, row)) = l
                .weights
                .iter()
                .enumerate()
                .find(|(_, w)| w.len() != inputs)
            {
                return Err(bad(format!(
                    "network layer '{}', row {r}, has {} weights; its shape says {inputs}",
                    l.name,
                    row.len()
                )));
            }
            if l.biases.len() != units {
                return Err(bad(format!(
                    "network layer '{}' has {} biases; its shape says {units}",
                    l.name,
                    l.biases.len()
                )));
            }
            let mut seen = std::collections::HashSet::new();
            for c in l.hashed.iter().flatten() {
                if c.slot >= shape.hashed {
                    return Err(bad(format!(
                        "network layer '{}': hashed slot {} is outside 2^{}",
                        l.name, c.slot, f.hash_bits
                    )));
                }
                if !seen.insert(c.slot) {
                    return Err(bad(format!(
                        "network layer '{}': hashed slot {} is listed twice",
                        l.name, c.slot
                    )));
                }
                if c.weights.len() != units {
                    return Err(bad(format!(
                        "network layer '{}': hashed slot {} has {} weights, one per unit is {units}",
                        l.name,
                        c.slot,
                        c.weights.len()
                    )));
                }
            }
        }
        // The parameters, once: the file's values, the hashed columns it
        // does not list at their start.
        let mut theta = vec![0.0; shape.len()];
        for (l, &(w_at, b_at, units, cols)) in section.layers.iter().zip(&places) {
            let inputs = l.shape[1];
            for (r, row) in l.weights.iter().enumerate() {
                let at = w_at + r * cols;
                theta[at..at + inputs].copy_from_slice(row);
                for slot in 0..cols - inputs {
                    theta[at + inputs + slot] = hashed_init(seed, r, slot, bound);
                }
            }
            theta[b_at..b_at + units].copy_from_slice(&l.biases);
            for c in l.hashed.iter().flatten() {
                for (r, v) in c.weights.iter().enumerate() {
                    theta[w_at + r * cols + inputs + c.slot] = *v;
                }
            }
        }
        if let Some(i) = theta.iter().position(|w| !w.is_finite()) {
            return Err(bad(format!("network parameter {i} is {}", theta[i])));
        }
        Mlp::new(self.kind, shape, section.activation, seed, theta).map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::encode::NumericFeature;
    use crate::model::Model;
    use crate::spec::OnMissing;

    fn features(categorical: bool) -> FeatureSpec {
        FeatureSpec {
            label: "y".into(),
            numeric: ["a", "b"]
                .map(|n| NumericFeature {
                    name: n.into(),
                    fill: 0.0,
                    center: 0.5,
                    scale: 2.0,
                })
                .to_vec(),
            categorical: if categorical {
                vec!["c".into()]
            } else {
                Vec::new()
            },
            crosses: Vec::new(),
            hash_bits: 3,
            on_missing: OnMissing::Error,
            classes: Some(vec!["x".into(), "y".into(), "z".into()]),
            weight: None,
        }
    }

    fn network(categorical: bool) -> (Mlp, FeatureSpec) {
        let f = features(categorical);
        let spec = crate::spec::NetworkSpec {
            hidden: vec![4, 3],
            activation: Activation::Tanh,
            seed: 5,
        };
        let mut m =
            Mlp::build(ModelKind::Softmax, &spec, &f, None).unwrap_or_else(|e| panic!("{e}"));
        // Move the weights (but two hashed columns) off their start.
        let first_hashed = |i: usize| {
            let (w, _, _, cols) = m.layer_offsets(0);
            i >= w && i < w + 4 * cols && (i - w) % cols >= 2 && (i - w) % cols < 2 + 6
        };
        let moved: Vec<usize> = (0..m.params().len())
            .filter(|&i| !first_hashed(i))
            .collect();
        for i in moved {
            m.params_mut()[i] += 0.125 * (i % 7) as f64;
        }
        (m, f)
    }

    fn reread(file: &ModelFile) -> std::result::Result<Mlp, String> {
        let json = file.to_json().map_err(|e| e.to_string())?;
        let back: ModelFile = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        back.check_sections()?;
        back.network
            .as_ref()
            .ok_or("no network")?
            .param_count(back.kind, &back.features)?;
        back.to_network(Path::new("m.json"))
            .map_err(|e| e.to_string())
    }

    /// A written network reads back to the same parameters, bit for bit,
    /// listing only the hashed columns that moved.
    #[test]
    fn a_network_file_reads_back_exactly() {
        for categorical in [false, true] {
            let (m, f) = network(categorical);
            let file = m.to_file(&f, TrainingSummary::default());
            assert_eq!(file.version, 2);
            let hashed = file
                .network
                .as_ref()
                .and_then(|n| n.layers[0].hashed.as_ref());
            assert_eq!(
                hashed.map(Vec::len),
                categorical.then_some(2),
                "the moved columns only"
            );
            let back = reread(&file).unwrap_or_else(|e| panic!("{e}"));
            let bits = |m: &Mlp| m.params().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(&m));
        }
    }

    /// What a hand-edited or hostile file gets wrong is named.
    #[test]
    fn a_network_file_that_does_not_fit_is_refused() {
        let (m, f) = network(true);
        let good = m.to_file(&f, TrainingSummary::default());
        type Edit = Box<dyn Fn(&mut ModelFile)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|f| f.version = 1), "version 2"),
            (Box::new(|f| f.kind = ModelKind::Hinge), "head"),
            (
                Box::new(|f| f.intercept = Some(super::super::weights::Weights::Number(0.0))),
                "\"intercept\"",
            ),
            (
                Box::new(|f| net(f).layers[1].name = "hidden_9".into()),
                "named 'hidden_9'",
            ),
            (
                Box::new(|f| net(f).layers[1].shape = [3, 5]),
                "shape [3, 5]",
            ),
            (
                Box::new(|f| net(f).layers[2].shape = [2, 3]),
                "a softmax head has 3",
            ),
            (
                Box::new(|f| {
                    net(f).layers[0].weights[1].pop();
                }),
                "row 1",
            ),
            (
                Box::new(|f| {
                    net(f).layers[1].biases.pop();
                }),
                "biases",
            ),
            (
                Box::new(|f| {
                    if let Some(h) = net(f).layers[0].hashed.as_mut() {
                        h[0].slot = 8;
                    }
                }),
                "outside 2^3",
            ),
            (
                Box::new(|f| {
                    if let Some(h) = net(f).layers[0].hashed.as_mut() {
                        h[1].slot = h[0].slot;
                    }
                }),
                "listed twice",
            ),
            (
                Box::new(|f| {
                    net(f).layers[1].hashed = Some(Vec::new());
                }),
                "only the first layer",
            ),
            (
                Box::new(|f| net(f).hashed_init = None),
                "needs network.hashed_init",
            ),
            (
                Box::new(|f| {
                    if let Some(h) = net(f).hashed_init.as_mut() {
                        h.bound *= 2.0;
                    }
                }),
                "bound",
            ),
            (Box::new(|f| net(f).layers.truncate(1)), "1 layers"),
        ];
        for (edit, want) in cases {
            let mut file = good.clone();
            edit(&mut file);
            let err = reread(&file)
                .err()
                .unwrap_or_else(|| panic!("{want}: accepted"));
            assert!(err.contains(want), "{want}: {err}");
        }
        // Hashed columns where the features have no categorical column.
        let (m, f) = network(false);
        let mut file = m.to_file(&f, TrainingSummary::default());
        net(&mut file).layers[0].hashed = Some(Vec::new());
        let err = reread(&file).err().unwrap_or_default();
        assert!(err.contains("no categorical column"), "{err}");
    }

    fn net(f: &mut ModelFile) -> &mut NetworkSection {
        f.network.as_mut().unwrap_or_else(|| unreachable!())
    }
}
