//! The model file: versioned JSON carrying the feature spec, so that
//! `predict` reproduces training's preprocessing exactly.
//!
//! See `docs/model-format.md` for the format.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Layout, LinearModel};
use crate::data::encode::{check_classes, FeatureSpec};
use crate::error::{Error, Result};
use crate::io::bounded::{self, MAX_MODEL_BYTES};
use crate::spec::ModelKind;
use crate::spec::MAX_HASH_BITS;

/// Format tag written into every model file.
pub const FORMAT: &str = "tidemill-model";
/// Current format version.
pub const VERSION: u32 = 1;

/// What the training run reports about itself (no timings or worker counts,
/// so that the file is identical however the job was distributed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainingSummary {
    /// Epochs (or L-BFGS iterations) run.
    pub epochs: u32,
    /// Training rows.
    pub rows: u64,
    /// Final objective on the training rows, when known exactly (L-BFGS).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub objective: Option<f64>,
    /// The optimizer, as configured.
    pub optimizer: String,
    /// L2 penalty.
    pub l2: f64,
    /// L1 penalty.
    pub l1: f64,
}

/// A model file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelFile {
    /// Always `tidemill-model`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Model family.
    pub kind: ModelKind,
    /// Preprocessing.
    pub features: FeatureSpec,
    /// Intercept (number), or per class (object) for softmax.
    pub intercept: Value,
    /// Weight per numeric feature name, or per class then feature for softmax.
    pub coefficients: Value,
    /// Non-zero weights of the hashed space, keyed by slot (per class for softmax).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hashed: Option<Value>,
    /// About the run.
    pub training: TrainingSummary,
}

fn class_names(spec: &FeatureSpec, k: usize) -> Vec<String> {
    spec.classes
        .clone()
        .unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect())
}

impl ModelFile {
    /// Builds the file content of a trained model.
    pub fn new(
        model: &LinearModel,
        features: &FeatureSpec,
        training: TrainingSummary,
    ) -> ModelFile {
        let Layout { k, d, p } = model.layout;
        let block = |kk: usize| -> (Value, Value, Map<String, Value>) {
            let base = kk * (d + 1);
            let intercept = Value::from(model.theta[base]);
            let coefs: Map<String, Value> = features
                .numeric
                .iter()
                .enumerate()
                .map(|(j, f)| (f.name.clone(), Value::from(model.theta[base + 1 + j])))
                .collect();
            let hashed: Map<String, Value> = (p..d)
                .filter(|&j| model.theta[base + 1 + j] != 0.0)
                .map(|j| ((j - p).to_string(), Value::from(model.theta[base + 1 + j])))
                .collect();
            (intercept, Value::Object(coefs), hashed)
        };
        let has_hashed = d > p;
        let (intercept, coefficients, hashed) = if model.kind == ModelKind::Softmax {
            let names = class_names(features, k);
            let mut i = Map::new();
            let mut c = Map::new();
            let mut h = Map::new();
            for (kk, name) in names.iter().enumerate().take(k) {
                let (a, b, hh) = block(kk);
                i.insert(name.clone(), a);
                c.insert(name.clone(), b);
                h.insert(name.clone(), Value::Object(hh));
            }
            (
                Value::Object(i),
                Value::Object(c),
                has_hashed.then_some(Value::Object(h)),
            )
        } else {
            let (a, b, hh) = block(0);
            (a, b, has_hashed.then_some(Value::Object(hh)))
        };
        ModelFile {
            format: FORMAT.into(),
            version: VERSION,
            kind: model.kind,
            features: features.clone(),
            intercept,
            coefficients,
            hashed,
            training,
        }
    }

    /// Serialises to pretty JSON (deterministic: keys in feature order).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .map_err(|e| Error::Model {
                path: "(model)".into(),
                message: e.to_string(),
            })
    }

    /// Reads and checks a model file.
    ///
    /// The file is parsed as it is read, so that something that is not a
    /// model (`/dev/urandom`, a Parquet file) fails on its first bytes, and
    /// no more than [`MAX_MODEL_BYTES`] are ever read. Everything a later
    /// step relies on (class counts, distinct names, finite
    /// preprocessing, the size of the parameter vector) is checked here.
    pub fn load(path: &Path) -> Result<ModelFile> {
        let bad = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let reader = bounded::open(path, MAX_MODEL_BYTES).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => bad(e.to_string()),
            _ => Error::io(path, e),
        })?;
        let head: Value = serde_json::from_reader(reader)
            .map_err(|e| bad(format!("not a JSON model file: {e}")))?;
        match head.get("format") {
            Some(Value::String(s)) if s == FORMAT => {}
            Some(other) => {
                return Err(bad(format!(
                    "not a tidemill model (\"format\" is {other}, not \"{FORMAT}\")"
                )))
            }
            None => {
                return Err(bad(format!(
                    "not a tidemill model (missing \"format\": \"{FORMAT}\")"
                )))
            }
        }
        match head.get("version") {
            Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
            Some(v) if v.is_u64() => {
                return Err(bad(format!(
                    "model format version {v}; this tidemill reads version {VERSION}"
                )))
            }
            Some(v) => {
                return Err(bad(format!(
                    "\"version\" must be the number {VERSION}, got {v}"
                )))
            }
            None => return Err(bad("missing \"version\"".into())),
        }
        let file: ModelFile = serde_json::from_value(head).map_err(|e| bad(e.to_string()))?;
        file.check().map_err(bad)?;
        Ok(file)
    }

    /// Checks what the format cannot express: a file that passes can be
    /// turned into a model and score rows without a panic.
    fn check(&self) -> std::result::Result<(), String> {
        let f = &self.features;
        if f.label.is_empty() {
            return Err("features.label is empty".into());
        }
        if !(1..=MAX_HASH_BITS).contains(&f.hash_bits) {
            return Err(format!(
                "features.hash_bits is {}; it must be in 1..={MAX_HASH_BITS}",
                f.hash_bits
            ));
        }
        let mut names = std::collections::HashSet::new();
        for name in f.numeric.iter().map(|n| &n.name).chain(&f.categorical) {
            if !names.insert(name.as_str()) {
                return Err(format!("feature '{name}' is listed twice"));
            }
        }
        for n in &f.numeric {
            let ok =
                n.fill.is_finite() && n.center.is_finite() && n.scale.is_finite() && n.scale > 0.0;
            if !ok {
                return Err(format!(
                    "feature '{}' has fill {}, center {}, scale {}: they must be finite and the scale positive",
                    n.name, n.fill, n.center, n.scale
                ));
            }
        }
        match (self.kind, &f.classes) {
            (ModelKind::Linear, None) => {}
            (ModelKind::Linear, Some(_)) => {
                return Err("a linear (regression) model has no classes".into())
            }
            (_, None) => return Err(format!("a {:?} model needs features.classes", self.kind)),
            (kind, Some(classes)) => {
                check_classes(classes).map_err(|m| format!("features.classes: {m}"))?;
                let binary = matches!(kind, ModelKind::Logistic | ModelKind::Hinge);
                if binary && classes.len() != 2 {
                    return Err(format!(
                        "a binary model needs 2 classes, features.classes has {}",
                        classes.len()
                    ));
                }
                if kind == ModelKind::Softmax
                    && !(2..=crate::data::encode::MAX_CLASSES).contains(&classes.len())
                {
                    return Err(format!(
                        "a softmax model needs 2 to {} classes, features.classes has {}",
                        crate::data::encode::MAX_CLASSES,
                        classes.len()
                    ));
                }
            }
        }
        let layout = Layout::new(self.kind, f);
        crate::memory::check(
            (layout.len() as u64).saturating_mul(8),
            &format!("the model's {} parameters", layout.len()),
        )
    }

    /// The in-memory model.
    #[allow(clippy::needless_range_loop)]
    pub fn to_model(&self, path: &Path) -> Result<LinearModel> {
        let layout = Layout::new(self.kind, &self.features);
        let bad = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let mut theta = vec![0.0; layout.len()];
        let names = class_names(&self.features, layout.k);
        let number = |v: Option<&Value>, what: &str| -> Result<f64> {
            v.and_then(Value::as_f64)
                .ok_or_else(|| bad(format!("{what} is missing or not a number")))
        };
        for kk in 0..layout.k {
            let base = kk * (layout.d + 1);
            let (icpt, coefs, hashed) = if self.kind == ModelKind::Softmax {
                let c = &names[kk];
                (
                    self.intercept.get(c),
                    self.coefficients.get(c),
                    self.hashed.as_ref().and_then(|h| h.get(c)),
                )
            } else {
                (
                    Some(&self.intercept),
                    Some(&self.coefficients),
                    self.hashed.as_ref(),
                )
            };
            theta[base] = number(icpt, "intercept")?;
            for (j, f) in self.features.numeric.iter().enumerate() {
                theta[base + 1 + j] = number(
                    coefs.and_then(|c| c.get(&f.name)),
                    &format!("coefficient '{}'", f.name),
                )?;
            }
            if let Some(Value::Object(h)) = hashed {
                for (slot, w) in h {
                    let j: usize = slot
                        .parse()
                        .map_err(|_| bad(format!("hashed slot '{slot}' is not a number")))?;
                    if j >= layout.d - layout.p {
                        return Err(bad(format!(
                            "hashed slot {j} is outside 2^{}",
                            self.features.hash_bits
                        )));
                    }
                    theta[base + 1 + layout.p + j] =
                        number(Some(w), &format!("hashed weight {slot}"))?;
                }
            }
        }
        Ok(LinearModel {
            kind: self.kind,
            layout,
            theta,
        })
    }
}
