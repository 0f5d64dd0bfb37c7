//! The model file: versioned JSON carrying the feature spec, so that
//! `predict` reproduces training's preprocessing exactly.
//!
//! See `docs/model-format.md` for the format.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::bayes::NaiveBayes;
use super::weights::{repeated, Named, Weights};
use super::{Layout, LinearModel};
use crate::data::encode::{check_classes, FeatureSpec, MAX_VALUE};
use crate::error::{Error, Result};
use crate::io::bounded::{self, MAX_MODEL_BYTES};
use crate::spec::ModelKind;
use crate::spec::MAX_HASH_BITS;

/// Format tag written into every model file.
pub const FORMAT: &str = "tidemill-model";
/// The newest format version, which this tidemill reads with every older
/// one. A file is written at the lowest version that holds its model: 1
/// for the linear family and naive Bayes, 2 for a network (its
/// `"network"` section), 3 for either with a numeric feature in a cross
/// (whose slots a version 1 or 2 reader would score without the value).
pub const VERSION: u32 = 3;
/// The version of the files without a network.
pub const VERSION_LINEAR: u32 = 1;
/// The version of the files with a numeric feature in a cross.
pub const VERSION_NUMERIC_CROSSES: u32 = 3;

/// The version a model of `features` is written at, `base` being its
/// family's ([`VERSION_LINEAR`], or 2 for a network).
pub fn version_for(features: &FeatureSpec, base: u32) -> u32 {
    if features
        .crosses
        .iter()
        .any(|c| c.of.iter().any(|m| features.is_numeric(m)))
    {
        VERSION_NUMERIC_CROSSES
    } else {
        base
    }
}

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
    /// Which rows the model contains (exact models with a `data.key`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<DataStamp>,
}

/// Which rows an exact model contains, for an auditor: their number and
/// an order-independent digest of their keys (docs/incremental.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataStamp {
    /// The key column.
    pub key: String,
    /// Rows present.
    pub rows: u64,
    /// The sum of the BLAKE3-256 hashes of the keys present, in two
    /// wrapping 128-bit lanes, as 64 hex digits.
    pub keys_blake3_sum: String,
}

/// A model file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Always `tidemill-model`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Model family.
    pub kind: ModelKind,
    /// Preprocessing.
    pub features: FeatureSpec,
    /// Intercept (number), or per class (object) for softmax; a network
    /// has none (its biases are in `network`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub intercept: Option<Weights>,
    /// Weight per numeric feature name, or per class then feature for
    /// softmax; a network has none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub coefficients: Option<Weights>,
    /// Non-zero weights of the hashed space, keyed by slot (per class for softmax).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hashed: Option<Weights>,
    /// About the run.
    pub training: TrainingSummary,
    /// A snapshot of a stream (`tidemill stream`): where in it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stream: Option<StreamStamp>,
    /// What a naive Bayes model holds besides its priors (`intercept`)
    /// and per-class means or log-probabilities (`coefficients`, `hashed`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub naive_bayes: Option<BayesSection>,
    /// A network's layers (`model.kind = "mlp"`; version 2).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub network: Option<super::network_file::NetworkSection>,
}

/// The naive Bayes part of a model file (docs/model-format.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BayesSection {
    /// Training rows per class.
    pub class_rows: Weights,
    /// `gaussian_nb`: per class, each feature's variance (smoothing
    /// included).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variance: Option<Weights>,
    /// `gaussian_nb`: the `var_smoothing` asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub var_smoothing: Option<f64>,
    /// `gaussian_nb`: what it added to every variance.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub epsilon: Option<f64>,
    /// `multinomial_nb`: the additive smoothing.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alpha: Option<f64>,
    /// `multinomial_nb` with hashed columns: per class, the `log θ` of
    /// every slot `hashed` does not list.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unseen_slot: Option<Weights>,
}

/// Where in its stream a model snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStamp {
    /// Snapshots published so far, this one included (1, 2, …).
    pub snapshot: u64,
    /// Batches trained on.
    pub batches: u64,
    /// Rows of the stream consumed (every one scored, then trained on).
    pub rows: u64,
    /// The input (`-` for stdin).
    pub input: String,
}

fn class_names(spec: &FeatureSpec, k: usize) -> Vec<String> {
    spec.classes
        .clone()
        .unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect())
}

/// What the first pass over a model file found at `format` and `version`,
/// without holding anything else of the file.
#[derive(Debug, Deserialize)]
struct Header {
    format: Option<Probe>,
    version: Option<Probe>,
    /// Present in a network's file, whose arrays of numbers take more
    /// memory per byte once parsed.
    network: Option<serde::de::IgnoredAny>,
}

/// A JSON value seen but not kept: strings and integers as they are, the
/// rest described.
#[derive(Debug)]
enum Probe {
    Text(String),
    Integer(u64),
    Other(&'static str),
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Text(s) => write!(f, "{:?}", s.chars().take(40).collect::<String>()),
            Probe::Integer(v) => write!(f, "{v}"),
            Probe::Other(what) => f.write_str(what),
        }
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Probe, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Probe;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Probe, E> {
                Ok(Probe::Text(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Probe, E> {
                Ok(Probe::Integer(v))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Probe, E> {
                Ok(Probe::Other("a negative number"))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Probe, E> {
                Ok(Probe::Other("a fractional number"))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Probe, E> {
                Ok(Probe::Other("a boolean"))
            }
            fn visit_unit<E>(self) -> std::result::Result<Probe, E> {
                Ok(Probe::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Probe, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Probe::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Probe, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Probe::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A reader that keeps a copy of what it reads, up to `limit` bytes: a
/// model file that is not a regular file (a FIFO, `<(…)`) can be read
/// only once, so its first pass keeps the bytes for the second.
struct Tee<R> {
    inner: R,
    kept: Vec<u8>,
    limit: usize,
}

impl<R: std::io::Read> std::io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.kept.len() + n > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "larger than {}, the most that fits in memory here",
                    crate::memory::human(self.limit as u64)
                ),
            ));
        }
        self.kept.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Bytes of memory a model file needs per byte of JSON once parsed, at
/// most (names and `f64`s in vectors; see [`super::weights`]).
const PARSED_BYTES_PER_BYTE: u64 = 2;

/// The same for a network's file: an array's `0,` (2 bytes) becomes an
/// `f64` (8), in a vector that may hold twice the room it uses.
const NETWORK_PARSED_BYTES_PER_BYTE: u64 = 8;

impl ModelFile {
    /// Builds the file content of a trained model.
    pub fn new(
        model: &LinearModel,
        features: &FeatureSpec,
        training: TrainingSummary,
    ) -> ModelFile {
        let Layout { k, d, p } = model.layout;
        let block = |kk: usize| -> (f64, Named, Named) {
            let base = kk * (d + 1);
            let coefs: Named = features
                .numeric
                .iter()
                .enumerate()
                .map(|(j, f)| (f.name.clone(), model.theta[base + 1 + j]))
                .collect();
            let hashed: Named = (p..d)
                .filter(|&j| model.theta[base + 1 + j] != 0.0)
                .map(|j| ((j - p).to_string(), model.theta[base + 1 + j]))
                .collect();
            (model.theta[base], coefs, hashed)
        };
        let has_hashed = d > p;
        let (intercept, coefficients, hashed) = if model.kind == ModelKind::Softmax {
            let names = class_names(features, k);
            let (mut i, mut c, mut h) = (Vec::new(), Vec::new(), Vec::new());
            for (kk, name) in names.iter().enumerate().take(k) {
                let (a, b, hh) = block(kk);
                i.push((name.clone(), a));
                c.push((name.clone(), b));
                h.push((name.clone(), hh));
            }
            (
                Weights::Named(i),
                Weights::PerClass(c),
                has_hashed.then_some(Weights::PerClass(h)),
            )
        } else {
            let (a, b, hh) = block(0);
            (
                Weights::Number(a),
                Weights::Named(b),
                has_hashed.then_some(Weights::Named(hh)),
            )
        };
        ModelFile {
            format: FORMAT.into(),
            version: version_for(features, VERSION_LINEAR),
            kind: model.kind,
            features: features.clone(),
            intercept: Some(intercept),
            coefficients: Some(coefficients),
            hashed,
            training,
            stream: None,
            naive_bayes: None,
            network: None,
        }
    }

    /// Builds the file content of a fitted naive Bayes model.
    pub fn of_bayes(
        model: &NaiveBayes,
        features: &FeatureSpec,
        training: TrainingSummary,
    ) -> ModelFile {
        let names = class_names(features, model.k);
        let p = model.p;
        let gaussian = model.kind == ModelKind::GaussianNb;
        let w = NaiveBayes::width(model.kind, p, model.slots);
        let block = |c: usize| &model.theta[c * w..(c + 1) * w];
        let per_class = |f: &dyn Fn(usize) -> Named| -> Weights {
            Weights::PerClass(
                names
                    .iter()
                    .enumerate()
                    .map(|(c, n)| (n.clone(), f(c)))
                    .collect(),
            )
        };
        let numeric = |c: usize, at: usize| -> Named {
            features
                .numeric
                .iter()
                .enumerate()
                .map(|(j, f)| (f.name.clone(), block(c)[at + j]))
                .collect()
        };
        let by_name = |v: &dyn Fn(usize) -> f64| -> Weights {
            Weights::Named(
                names
                    .iter()
                    .enumerate()
                    .map(|(c, n)| (n.clone(), v(c)))
                    .collect(),
            )
        };
        let hashed = (model.slots > 0).then(|| {
            per_class(&|c| {
                (0..model.slots)
                    .filter(|&s| block(c)[1 + p + s] != model.unseen[c])
                    .map(|s| (s.to_string(), block(c)[1 + p + s]))
                    .collect()
            })
        });
        ModelFile {
            format: FORMAT.into(),
            version: version_for(features, VERSION_LINEAR),
            kind: model.kind,
            features: features.clone(),
            intercept: Some(by_name(&|c| block(c)[0])),
            coefficients: Some(per_class(&|c| numeric(c, 1))),
            hashed,
            training,
            stream: None,
            naive_bayes: Some(BayesSection {
                class_rows: by_name(&|c| model.class_rows[c] as f64),
                variance: gaussian.then(|| per_class(&|c| numeric(c, 1 + p))),
                var_smoothing: gaussian.then_some(model.var_smoothing),
                epsilon: gaussian.then_some(model.epsilon),
                alpha: (!gaussian).then_some(model.alpha),
                unseen_slot: (model.slots > 0).then(|| by_name(&|c| model.unseen[c])),
            }),
            network: None,
        }
    }

    /// Serialises to pretty JSON (deterministic: keys in feature order).
    pub fn to_json(&self) -> Result<String> {
        let bad = |e: serde_json::Error| Error::Model {
            path: "(model)".into(),
            message: e.to_string(),
        };
        let mut v = serde_json::to_value(self).map_err(bad)?;
        // No crosses, no key: files without crosses are as they were.
        if let Some(f) = v
            .get_mut("features")
            .and_then(serde_json::Value::as_object_mut)
        {
            if f.get("crosses")
                .and_then(serde_json::Value::as_array)
                .is_some_and(Vec::is_empty)
            {
                f.shift_remove("crosses");
            }
        }
        serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(bad)
    }

    /// Reads and checks a model file.
    ///
    /// Two passes, each parsing as it reads: the first looks only at
    /// `format` and `version` (so that something that is not a model —
    /// `/dev/urandom`, a Parquet file — fails on its first bytes, and a
    /// future version is named as such), the second reads the typed model,
    /// refusing anything but numbers where weights go. At most
    /// [`MAX_MODEL_BYTES`] are read, and a file whose parsed form would not
    /// fit in the memory available is refused first. Everything a later
    /// step relies on (class counts, distinct names, finite
    /// preprocessing, the size of the parameter vector) is checked here.
    pub fn load(path: &Path) -> Result<ModelFile> {
        let bad = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let open = || {
            bounded::open(path, MAX_MODEL_BYTES).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => bad(e.to_string()),
                _ => Error::io(path, e),
            })
        };
        let regular = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .is_file();
        let mut kept = None;
        let header: std::result::Result<Header, serde_json::Error> = if regular {
            let len = std::fs::metadata(path).map_or(0, |m| m.len());
            crate::memory::check(
                len.saturating_mul(PARSED_BYTES_PER_BYTE),
                "reading this model file",
            )
            .map_err(bad)?;
            serde_json::from_reader(open()?)
        } else {
            let room =
                crate::memory::available().unwrap_or(MAX_MODEL_BYTES) / (1 + PARSED_BYTES_PER_BYTE);
            let mut tee = Tee {
                inner: open()?,
                kept: Vec::new(),
                limit: usize::try_from(room.min(MAX_MODEL_BYTES)).unwrap_or(usize::MAX),
            };
            let h = serde_json::from_reader(&mut tee);
            kept = Some(tee.kept);
            h
        };
        let header = header.map_err(|e| bad(format!("not a JSON model file: {e}")))?;
        if header.network.is_some() {
            let len = match &kept {
                Some(bytes) => bytes.len() as u64,
                None => std::fs::metadata(path).map_or(0, |m| m.len()),
            };
            crate::memory::check(
                len.saturating_mul(NETWORK_PARSED_BYTES_PER_BYTE),
                "reading this network's model file",
            )
            .map_err(bad)?;
        }
        match &header.format {
            Some(Probe::Text(s)) if s == FORMAT => {}
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
        match &header.version {
            Some(Probe::Integer(v)) if (1..=u64::from(VERSION)).contains(v) => {}
            Some(Probe::Integer(v)) => {
                return Err(bad(format!(
                    "model format version {v}; this tidemill reads versions 1 to {VERSION}"
                )))
            }
            Some(other) => {
                return Err(bad(format!(
                    "\"version\" must be a number from 1 to {VERSION}, got {other}"
                )))
            }
            None => return Err(bad("missing \"version\"".into())),
        }
        let file: ModelFile = match kept {
            Some(bytes) => serde_json::from_slice(&bytes),
            None => serde_json::from_reader(open()?),
        }
        .map_err(|e| bad(e.to_string()))?;
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
        // A cross is a categorical column after the columns it crosses.
        for cross in &f.crosses {
            let at = f.categorical.iter().position(|c| *c == cross.name);
            let before = |m: &String| {
                let k = f.categorical.iter().position(|c| c == m);
                (k.is_some_and(|k| at.is_some_and(|a| k < a)) && f.cross(m).is_none())
                    || f.is_numeric(m)
            };
            let hashed = cross.of.iter().any(|m| !f.is_numeric(m));
            let first = f.crosses.iter().position(|c| c.name == cross.name);
            let named = crate::spec::cross_name(&cross.of) == cross.name;
            let once = first.is_some_and(|i| std::ptr::eq(&f.crosses[i], cross));
            if at.is_none()
                || cross.of.len() < 2
                || !named
                || !once
                || !hashed
                || !cross.of.iter().all(before)
            {
                return Err(format!(
                    "features.crosses: '{}' is not a categorical column after the columns it crosses",
                    cross.name
                ));
            }
        }
        if version_for(f, 1) > self.version {
            return Err(format!(
                "a cross with a numeric feature needs format version {VERSION_NUMERIC_CROSSES}; the file says {}",
                self.version
            ));
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
            let filled = (n.fill - n.center) / n.scale;
            if n.fill.abs() > MAX_VALUE || filled.abs() > MAX_VALUE {
                return Err(format!(
                    "feature '{}': its fill {} becomes {filled:e} after standardisation, beyond ±{MAX_VALUE:e}",
                    n.name, n.fill
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
                if kind.prediction_kind() == ModelKind::Softmax
                    && !(2..=crate::data::encode::MAX_CLASSES).contains(&classes.len())
                {
                    return Err(format!(
                        "a {} model needs 2 to {} classes, features.classes has {}",
                        kind.name(),
                        crate::data::encode::MAX_CLASSES,
                        classes.len()
                    ));
                }
            }
        }
        if self.kind.is_naive_bayes() != self.naive_bayes.is_some() {
            return Err(format!(
                "a {} model {} a \"naive_bayes\" section",
                self.kind.name(),
                if self.kind.is_naive_bayes() {
                    "needs"
                } else {
                    "has no"
                }
            ));
        }
        self.check_sections()?;
        let len = if let Some(n) = &self.network {
            n.param_count(self.kind, f)?
        } else if self.kind.is_naive_bayes() {
            let k = f.classes.as_ref().map_or(0, Vec::len);
            let slots = NaiveBayes::slots_of(self.kind, f);
            k * NaiveBayes::width(self.kind, f.numeric.len(), slots)
        } else {
            Layout::new(self.kind, f).len()
        };
        // A network holds its parameters and, per parameter, an index in
        // its roles and the bits of their masks: three words each.
        let words = if self.network.is_some() { 3 } else { 1 };
        crate::memory::check(
            (len as u64).saturating_mul(8 * words),
            &format!("the model's {len} parameters"),
        )
    }

    /// The model the file holds, ready to predict: where reading chooses
    /// the model, as [`super::build`] does for training.
    pub fn load_model(&self, path: &Path) -> Result<Box<dyn super::Model>> {
        if self.network.is_some() {
            return Ok(Box::new(self.to_network(path)?));
        }
        if self.kind.is_naive_bayes() {
            return Ok(Box::new(self.to_bayes(path)?));
        }
        Ok(Box::new(self.to_model(path)?))
    }

    /// The in-memory naive Bayes model, every number where the layout
    /// puts it (checked as [`ModelFile::to_model`] checks a linear one).
    pub fn to_bayes(&self, path: &Path) -> Result<NaiveBayes> {
        let bad = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let section = self.naive_bayes.as_ref().ok_or_else(|| {
            bad(format!(
                "a {} model needs a \"naive_bayes\" section",
                self.kind.name()
            ))
        })?;
        let f = &self.features;
        let names = f.classes.clone().unwrap_or_default();
        let k = names.len();
        let p = f.numeric.len();
        let gaussian = self.kind == ModelKind::GaussianNb;
        // Fitted on the values as they are: no standardisation to redo.
        if let Some(n) = f.numeric.iter().find(|n| n.center != 0.0 || n.scale != 1.0) {
            return Err(bad(format!(
                "feature '{}' has center {} and scale {}: a naive Bayes model takes values as they are (0 and 1)",
                n.name, n.center, n.scale
            )));
        }
        let stray = if gaussian {
            [
                ("alpha", section.alpha.is_some()),
                ("unseen_slot", section.unseen_slot.is_some()),
            ]
        } else {
            [
                ("var_smoothing", section.var_smoothing.is_some()),
                ("epsilon", section.epsilon.is_some()),
            ]
        };
        if let Some((name, _)) = stray.iter().find(|(_, present)| *present) {
            return Err(bad(format!(
                "naive_bayes.{name} does not belong to a {} model",
                self.kind.name()
            )));
        }
        let slots = NaiveBayes::slots_of(self.kind, f);
        let w = NaiveBayes::width(self.kind, p, slots);
        let per_class_number =
            |w: &Weights, what: &str| number_per_class(w, &names, what).map_err(bad);
        let per_class_named =
            |w: &Weights, what: &str| named_per_class(w, &names, what).map_err(bad);
        // Each numeric feature's number, none missing or unknown.
        let features_of = |named: &Named, what: &str| -> Result<Vec<f64>> {
            let map = index(named, what).map_err(bad)?;
            if let Some(extra) = named
                .iter()
                .find(|(n, _)| !f.numeric.iter().any(|g| &g.name == n))
            {
                return Err(bad(format!(
                    "{what}: '{}' names no numeric feature",
                    extra.0
                )));
            }
            f.numeric
                .iter()
                .map(|g| {
                    map.get(g.name.as_str())
                        .copied()
                        .ok_or_else(|| bad(format!("{what}: '{}' is missing", g.name)))
                })
                .collect()
        };
        let priors = per_class_number(
            required(&self.intercept, "intercept").map_err(bad)?,
            "intercept",
        )?;
        let rows = per_class_number(&section.class_rows, "naive_bayes.class_rows")?;
        let coefficients = per_class_named(
            required(&self.coefficients, "coefficients").map_err(bad)?,
            "coefficients",
        )?;
        let mut theta = vec![0.0; k * w];
        let mut unseen = vec![0.0; k];
        let variance = match (&section.variance, gaussian) {
            (Some(v), true) => Some(per_class_named(v, "naive_bayes.variance")?),
            (None, true) => return Err(bad("gaussian_nb needs naive_bayes.variance".into())),
            (Some(_), false) => {
                return Err(bad("naive_bayes.variance belongs to gaussian_nb".into()))
            }
            (None, false) => None,
        };
        let hashed = match (&self.hashed, slots > 0) {
            (Some(h), true) => Some(per_class_named(h, "hashed")?),
            (None, true) => Some(vec![Named::new(); k]),
            (Some(_), false) => {
                return Err(bad("hashed weights without categorical columns".into()))
            }
            (None, false) => None,
        };
        if slots > 0 {
            let u = section.unseen_slot.as_ref().ok_or_else(|| {
                bad("multinomial_nb with hashed columns needs naive_bayes.unseen_slot".into())
            })?;
            unseen = per_class_number(u, "naive_bayes.unseen_slot")?;
        }
        for c in 0..k {
            let b = &mut theta[c * w..(c + 1) * w];
            b[0] = priors[c];
            b[1..1 + p].copy_from_slice(&features_of(&coefficients[c], "coefficients")?);
            if let Some(v) = &variance {
                let v = features_of(&v[c], "naive_bayes.variance")?;
                if let Some(j) = v.iter().position(|x| x.is_nan() || *x <= 0.0) {
                    return Err(bad(format!(
                        "naive_bayes.variance of class '{}', feature '{}' is {}: variances must be > 0",
                        names[c], f.numeric[j].name, v[j]
                    )));
                }
                b[1 + p..].copy_from_slice(&v);
            }
            if let Some(h) = &hashed {
                b[1 + p..].iter_mut().for_each(|x| *x = unseen[c]);
                if let Some(slot) = repeated(&h[c]) {
                    return Err(bad(format!("hashed slot '{slot}' is listed twice")));
                }
                for (slot, v) in &h[c] {
                    let j: usize = slot
                        .parse()
                        .map_err(|_| bad(format!("hashed slot '{slot}' is not a number")))?;
                    if j >= slots {
                        return Err(bad(format!("hashed slot {j} is outside 2^{}", f.hash_bits)));
                    }
                    b[1 + p + j] = *v;
                }
            }
        }
        if let Some(i) = theta.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("parameter {i} is {}", theta[i])));
        }
        let class_rows = rows
            .iter()
            .map(|&r| {
                if r >= 0.0 && r.fract() == 0.0 && r < 2f64.powi(53) {
                    Ok(r as u64)
                } else {
                    Err(bad(format!(
                        "naive_bayes.class_rows holds {r}, not a count"
                    )))
                }
            })
            .collect::<Result<Vec<u64>>>()?;
        Ok(NaiveBayes {
            kind: self.kind,
            k,
            p,
            slots,
            theta,
            class_rows,
            unseen,
            alpha: section.alpha.unwrap_or(0.0),
            var_smoothing: section.var_smoothing.unwrap_or(0.0),
            epsilon: section.epsilon.unwrap_or(0.0),
        })
    }

    /// The in-memory linear model: every weight where the layout puts it,
    /// every name the file gives a weight to known, none given twice.
    pub fn to_model(&self, path: &Path) -> Result<LinearModel> {
        let layout = Layout::new(self.kind, &self.features);
        let bad = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        if self.kind.is_naive_bayes() || self.network.is_some() {
            return Err(bad(format!(
                "a {} model is not a linear model",
                if self.network.is_some() {
                    "network"
                } else {
                    self.kind.name()
                }
            )));
        }
        let intercept = required(&self.intercept, "intercept").map_err(bad)?;
        let coefficients = required(&self.coefficients, "coefficients").map_err(bad)?;
        let mut theta = vec![0.0; layout.len()];
        let names = class_names(&self.features, layout.k);
        let softmax = self.kind == ModelKind::Softmax;
        // Per class (softmax) or once: the named numbers under a key.
        let by_class = |w: &Weights, what: &str| -> Result<Vec<Named>> {
            if !softmax {
                return match w {
                    Weights::Named(n) => Ok(vec![n.clone()]),
                    _ => Err(bad(format!("{what} must be an object of numbers"))),
                };
            }
            named_per_class(w, &names, what).map_err(bad)
        };
        let intercepts: Vec<f64> = if softmax {
            number_per_class(intercept, &names, "intercept").map_err(bad)?
        } else {
            vec![intercept
                .number()
                .ok_or_else(|| bad("intercept must be a number".into()))?]
        };
        let coefficients = by_class(coefficients, "coefficients")?;
        let hashed = match &self.hashed {
            Some(h) => Some(by_class(h, "hashed")?),
            None => None,
        };
        let slots = layout.d - layout.p;
        for kk in 0..layout.k {
            let base = kk * (layout.d + 1);
            theta[base] = intercepts[kk];
            let coefs = index(&coefficients[kk], "coefficients").map_err(bad)?;
            for (j, f) in self.features.numeric.iter().enumerate() {
                theta[base + 1 + j] = coefs
                    .get(f.name.as_str())
                    .copied()
                    .ok_or_else(|| bad(format!("coefficient '{}' is missing", f.name)))?;
            }
            if coefs.len() != self.features.numeric.len() {
                let extra = coefficients[kk]
                    .iter()
                    .find(|(n, _)| !self.features.numeric.iter().any(|f| &f.name == n))
                    .map_or("", |(n, _)| n.as_str());
                return Err(bad(format!(
                    "coefficient '{extra}' names no numeric feature"
                )));
            }
            for (slot, w) in hashed.as_ref().map_or(&[][..], |h| &h[kk][..]) {
                let j: usize = slot
                    .parse()
                    .map_err(|_| bad(format!("hashed slot '{slot}' is not a number")))?;
                if j >= slots {
                    return Err(bad(format!(
                        "hashed slot {j} is outside 2^{}",
                        self.features.hash_bits
                    )));
                }
                theta[base + 1 + layout.p + j] = *w;
            }
            if let Some(slot) = hashed.as_ref().and_then(|h| repeated(&h[kk])) {
                return Err(bad(format!("hashed slot '{slot}' is listed twice")));
            }
        }
        if let Some(i) = theta.iter().position(|w| !w.is_finite()) {
            return Err(bad(format!("weight {i} is {}", theta[i])));
        }
        Ok(LinearModel {
            kind: self.kind,
            layout,
            theta,
        })
    }
}

/// A key every model but a network has.
fn required<'a>(w: &'a Option<Weights>, what: &str) -> std::result::Result<&'a Weights, String> {
    w.as_ref().ok_or_else(|| format!("missing \"{what}\""))
}

/// One number per class under a key (`{class: number}`), in `names`
/// order: each class once, none unknown.
fn number_per_class(
    w: &Weights,
    names: &[String],
    what: &str,
) -> std::result::Result<Vec<f64>, String> {
    let n = w
        .named()
        .ok_or_else(|| format!("{what} must be an object of numbers per class"))?;
    let map = index(n, what)?;
    if let Some(extra) = n.iter().find(|(c, _)| !names.contains(c)) {
        return Err(format!("{what} names '{}', not a class", extra.0));
    }
    names
        .iter()
        .map(|c| {
            map.get(c.as_str())
                .copied()
                .ok_or_else(|| format!("{what} of class '{c}' is missing"))
        })
        .collect()
}

/// Numbers by name per class under a key, in `names` order.
fn named_per_class(
    w: &Weights,
    names: &[String],
    what: &str,
) -> std::result::Result<Vec<Named>, String> {
    let classes = w
        .per_class()
        .ok_or_else(|| format!("{what} must be an object per class"))?;
    one_per_class(&classes, names, what).map(|v| {
        v.into_iter()
            .map(|n| n.cloned().unwrap_or_default())
            .collect()
    })
}

/// `named` as a lookup, refusing a name listed twice.
fn index<'a>(
    named: &'a Named,
    what: &str,
) -> std::result::Result<std::collections::HashMap<&'a str, f64>, String> {
    if let Some(k) = repeated(named) {
        return Err(format!("{what}: '{k}' is listed twice"));
    }
    Ok(named.iter().map(|(k, v)| (k.as_str(), *v)).collect())
}

/// The entry of each class in `names` order: each class once, none unknown.
fn one_per_class<'a>(
    entries: &[(&str, Option<&'a Named>)],
    names: &[String],
    what: &str,
) -> std::result::Result<Vec<Option<&'a Named>>, String> {
    let known: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut by_name = std::collections::HashMap::new();
    for (c, v) in entries {
        if by_name.insert(*c, *v).is_some() {
            return Err(format!("{what}: class '{c}' is listed twice"));
        }
        if !known.contains(c) {
            return Err(format!("{what}: '{c}' is not a class"));
        }
    }
    names
        .iter()
        .map(|n| {
            by_name
                .get(n.as_str())
                .copied()
                .ok_or_else(|| format!("{what} of class '{n}' is missing"))
        })
        .collect()
}
