//! Mutation fuzzing of every reader of untrusted input: model files, pipeline
//! files and `--set` overrides, Parquet files (the training path and the
//! predict path) and Arrow IPC files and streams.
//!
//! Each property starts from a valid input, damages it (bit flips, byte
//! runs, truncation, splices, replaced JSON / TOML values) and runs the
//! reader and everything downstream of it that a command would run. A
//! panic fails the property; an `Err` is the expected outcome for most
//! cases, and an `Ok` must be usable (score rows, plan units).
//!
//! CI runs proptest's default 256 cases per property. A longer run:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test --release --test fuzz_readers
//! ```
//!
//! (its result is in docs/security.md).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;
use serde_json::Value;
use tidemill::data::encode::{decode, ClassMap, LabelUse, Origin};
use tidemill::data::window::{for_each_window, Split};
use tidemill::model::file::ModelFile;
use tidemill::predict::Scorer;
use tidemill::source::files::Source;
use tidemill::source::parquet::ParquetSource;
use tidemill::source::DataSource;
use tidemill::spec::Pipeline;

/// Fixtures made once per test binary: a model file, a Parquet file with
/// numeric, string, dictionary and nullable columns in several row groups,
/// and the same rows as an Arrow IPC file and stream.
struct Fixtures {
    _dir: tempfile::TempDir,
    model: Vec<u8>,
    parquet: Vec<u8>,
    ipc_file: Vec<u8>,
    ipc_stream: Vec<u8>,
    scratch: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let n = 120;
        let cols: Vec<(&str, ArrayRef)> = vec![
            (
                "x1",
                Arc::new(Float64Array::from(
                    (0..n).map(|i| Some(i as f64 * 0.25 - 7.0)).collect::<Vec<_>>(),
                )),
            ),
            (
                "x2",
                Arc::new(Int64Array::from(
                    (0..n).map(|i| if i % 17 == 0 { None } else { Some(i % 9) }).collect::<Vec<_>>(),
                )),
            ),
            (
                "city",
                Arc::new(StringArray::from(
                    (0..n).map(|i| format!("c{}", i % 13)).collect::<Vec<_>>(),
                )),
            ),
            (
                "kind",
                Arc::new(
                    (0..n)
                        .map(|i| ["a", "b", "c"][(i % 3) as usize])
                        .collect::<DictionaryArray<Int32Type>>(),
                ),
            ),
            (
                "y",
                Arc::new(Int32Array::from((0..n).map(|i| (i % 2) as i32).collect::<Vec<_>>())),
            ),
        ];
        let parquet_path = dir.path().join("data.parquet");
        common::write_parquet(&parquet_path, cols.clone(), 40);
        let batch = RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(
                cols.iter()
                    .map(|(name, a)| arrow::datatypes::Field::new(*name, a.data_type().clone(), true))
                    .collect::<Vec<_>>(),
            )),
            cols.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        let mut ipc_file = Vec::new();
        {
            let mut w = arrow::ipc::writer::FileWriter::try_new(&mut ipc_file, &batch.schema()).unwrap();
            w.write(&batch.slice(0, 60)).unwrap();
            w.write(&batch.slice(60, 60)).unwrap();
            w.finish().unwrap();
        }
        let mut ipc_stream = Vec::new();
        {
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(&mut ipc_stream, &batch.schema()).unwrap();
            w.write(&batch.slice(0, 60)).unwrap();
            w.write(&batch.slice(60, 60)).unwrap();
            w.finish().unwrap();
        }
        // A model trained on it, with hashed features and standardisation.
        let pipeline = dir.path().join("p.toml");
        let model_path = dir.path().join("model.json");
        std::fs::write(
            &pipeline,
            format!(
                "[data]\ntrain = {:?}\nlabel = \"y\"\ncategorical = [\"city\", \"kind\"]\nhash_bits = 6\nstandardize = true\non_missing = \"mean\"\n[model]\nkind = \"logistic\"\nl2 = 0.01\n[train]\nepochs = 5\n",
                parquet_path.to_string_lossy()
            ),
        )
        .unwrap();
        common::tidemill_ok(&[
            "train",
            &pipeline.to_string_lossy(),
            "--model-out",
            &model_path.to_string_lossy(),
        ]);
        Fixtures {
            model: std::fs::read(&model_path).unwrap(),
            parquet: std::fs::read(&parquet_path).unwrap(),
            ipc_file,
            ipc_stream,
            scratch: dir.path().to_path_buf(),
            _dir: dir,
        }
    })
}

/// A damage to a byte string.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, mask: u8 },
    Run { at: usize, bytes: Vec<u8> },
    Truncate { keep: usize },
    Splice { from: usize, to: usize, len: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Run { at, bytes }),
        1 => any::<usize>().prop_map(|keep| Damage::Truncate { keep }),
        1 => (any::<usize>(), any::<usize>(), 1usize..64)
            .prop_map(|(from, to, len)| Damage::Splice { from, to, len }),
    ]
}

fn apply(bytes: &[u8], damages: &[Damage]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for d in damages {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        match d {
            Damage::Flip { at, mask } => b[at % n] ^= mask,
            Damage::Run { at, bytes } => {
                let at = at % n;
                let end = (at + bytes.len()).min(n);
                b[at..end].copy_from_slice(&bytes[..end - at]);
            }
            Damage::Truncate { keep } => b.truncate(keep % n),
            Damage::Splice { from, to, len } => {
                let (from, to) = (from % n, to % n);
                let len = (*len).min(n - from).min(n - to);
                let piece = b[from..from + len].to_vec();
                b[to..to + len].copy_from_slice(&piece);
            }
        }
    }
    b
}

/// A scratch file for one case (cases run one at a time per property, but
/// properties run in parallel: the name says which).
fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let p = fixtures()
        .scratch
        .join(format!("{name}-{:?}", std::thread::current().id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Scores and evaluates every batch of the clean Parquet fixture with a
/// loaded model; an `Err` is fine, a panic is not.
fn exercise_model(path: &Path) {
    let Ok(scorer) = Scorer::load(path) else {
        return;
    };
    let data = scratch("clean.parquet", &fixtures().parquet);
    let Ok(input) = tidemill::io::table::open(
        &data.to_string_lossy(),
        &tidemill::io::table::CsvColumns::Numeric(Vec::new()),
    ) else {
        return;
    };
    let _ = scorer.output_fields();
    for item in input {
        let Ok((batch, origin)) = item else { return };
        let o = Origin {
            file: &origin.path,
            row_group: origin.row_group,
            first_row: origin.first_row,
        };
        let _ = scorer.score(&batch, &o);
        let mut partial = tidemill::metrics::EvalPartial::default();
        let _ = scorer.evaluate(&batch, &o, &mut partial);
        let _ = partial.finish(scorer.model().kind());
    }
}

/// A JSON value to put where another was.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1e308),
            Just(-1e-308),
            Just(f64::MAX),
            any::<f64>()
        ]
        .prop_filter("JSON numbers are finite", |v| v.is_finite())
        .prop_map(Value::from),
        "[a-z0-9_.]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map("[a-z0-9_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a pseudo-random path (chosen by `pick`) with `v`.
fn replace_somewhere(root: &mut Value, mut pick: u64, v: Value) {
    let mut node = root;
    loop {
        let children = match node {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        // Stop here with probability ~1/3, or at a leaf.
        if children == 0 || pick.is_multiple_of(3) {
            *node = v;
            return;
        }
        let i = (pick / 3) as usize % children;
        pick = pick.rotate_right(7) ^ 0x9E37_79B9_7F4A_7C15;
        node = match node {
            Value::Object(m) => m.values_mut().nth(i).unwrap(),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
}

proptest! {
    /// Damaged bytes of a model file.
    #[test]
    fn model_file_bytes(damages in proptest::collection::vec(damage(), 1..6)) {
        let bytes = apply(&fixtures().model, &damages);
        let p = scratch("model-bytes.json", &bytes);
        exercise_model(&p);
    }

    /// A model file with one value replaced by any JSON value.
    #[test]
    fn model_file_values(edits in proptest::collection::vec((any::<u64>(), json_value()), 1..4)) {
        let mut v: Value = serde_json::from_slice(&fixtures().model).unwrap();
        for (pick, value) in edits {
            replace_somewhere(&mut v, pick, value);
        }
        let p = scratch("model-values.json", serde_json::to_string(&v).unwrap().as_bytes());
        if let Ok(m) = ModelFile::load(&p) {
            // Whatever loads and converts is a model of the size its
            // feature spec says, with finite weights.
            if let Ok(model) = m.to_model(&p) {
                let layout = tidemill::model::Layout::new(m.kind, &m.features);
                prop_assert_eq!(model.theta.len(), layout.len());
                prop_assert!(model.theta.iter().all(|w| w.is_finite()));
            }
        }
        exercise_model(&p);
    }

    /// Damaged pipeline text and arbitrary `--set` overrides.
    #[test]
    fn pipeline_text_and_overrides(
        damages in proptest::collection::vec(damage(), 0..4),
        lines in proptest::collection::vec(("[a-z_.]{1,24}", "[ -~]{0,24}"), 0..4),
        sets in proptest::collection::vec("[ -~]{0,40}", 0..3),
    ) {
        let data = scratch("pipeline-data.parquet", &fixtures().parquet);
        let base = format!(
            "[data]\ntrain = {:?}\nlabel = \"y\"\ncategorical = [\"city\"]\nvalidation = {{ fraction = 0.2 }}\n[model]\nkind = \"logistic\"\nl2 = 0.1\n[optimizer]\nkind = \"adam\"\n[train]\nepochs = 2\nstrategy = \"param-server\"\nstaleness = 2\n",
            data.to_string_lossy()
        );
        let mut text = String::from_utf8_lossy(&apply(base.as_bytes(), &damages)).into_owned();
        for (k, v) in &lines {
            text.push_str(&format!("{k} = {v}\n"));
        }
        if let Ok(p) = Pipeline::parse(&text, Path::new("fuzz.toml"), &sets) {
            let _ = tidemill::plan::Plan::new(p);
        }
    }

    /// Damaged Parquet through the training path: open, plan units, read
    /// and decode each unit with the feature spec a pipeline would use.
    #[test]
    fn parquet_training_path(damages in proptest::collection::vec(damage(), 1..6)) {
        let bytes = apply(&fixtures().parquet, &damages);
        let p = scratch("train.parquet", &bytes);
        let columns: Vec<String> = ["x1", "x2", "city", "kind", "y"].iter().map(|s| s.to_string()).collect();
        let Ok(source) = Source::open(std::slice::from_ref(&p), &columns) else {
            return Ok(());
        };
        let model: ModelFile = serde_json::from_slice(&fixtures().model).unwrap();
        let spec = model.features.clone();
        let classes = ClassMap::new(spec.classes.as_deref().unwrap_or(&[]));
        let source = ParquetSource::new(source, 25);
        for u in source.units() {
            for label in [LabelUse::Classes(&classes), LabelUse::Tokens, LabelUse::Value, LabelUse::Skip] {
                let split = Split { fraction: Some(tidemill::data::window::Holdout::Fraction(0.3)), seed: 7 };
                let _ = for_each_window(&source, u, &spec, label, split, |_| Ok(()));
            }
        }
    }

    /// Damaged Parquet, Arrow IPC files and IPC streams through the
    /// predict path: open by magic, read every batch, decode it.
    #[test]
    fn table_inputs(which in 0usize..3, damages in proptest::collection::vec(damage(), 1..6)) {
        let f = fixtures();
        let (name, clean) = [
            ("in.parquet", &f.parquet),
            ("in.arrow", &f.ipc_file),
            ("in.arrows", &f.ipc_stream),
        ][which];
        let p = scratch(name, &apply(clean, &damages));
        let Ok(input) = tidemill::io::table::open(&p.to_string_lossy(), &tidemill::io::table::CsvColumns::Numeric(Vec::new())) else {
            return Ok(());
        };
        let model: ModelFile = serde_json::from_slice(&f.model).unwrap();
        for item in input.take(64) {
            let Ok((batch, origin)) = item else { break };
            let o = Origin { file: &origin.path, row_group: origin.row_group, first_row: origin.first_row };
            let _ = decode(&batch, &model.features, LabelUse::Skip, &o);
        }
    }
}

/// The fixtures themselves are valid: every property starts from a good input.
#[test]
fn fixtures_are_valid() {
    let f = fixtures();
    let p = scratch("valid.json", &f.model);
    assert!(Scorer::load(&p).is_ok());
    for (name, bytes) in [
        ("v.parquet", &f.parquet),
        ("v.arrow", &f.ipc_file),
        ("v.arrows", &f.ipc_stream),
    ] {
        let p = scratch(name, bytes);
        let rows: usize = tidemill::io::table::open(
            &p.to_string_lossy(),
            &tidemill::io::table::CsvColumns::Numeric(Vec::new()),
        )
        .unwrap()
        .map(|b| b.unwrap().0.num_rows())
        .sum();
        assert_eq!(rows, 120, "{name}");
    }
}
