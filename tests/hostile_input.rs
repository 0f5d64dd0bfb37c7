//! What a careless or hostile user can hand tidemill — duplicate names,
//! numbers beyond `f32`, corrupt pages, model files that are not models,
//! endless devices — ends in a clear message and a documented exit code,
//! never a silently wrong model, a panic (exit 101) or unbounded memory.
//!
//! Each test is a regression test for a defect found by a hostile pass.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, UInt64Array};
use common::{root, tidemill, write_parquet};
use serde_json::Value;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
    /// 60 rows: x1, x2 numeric, y in {0, 1}; `x1` of row 37 replaced by `odd`.
    fn data(&self, name: &str, odd: Option<f64>) -> PathBuf {
        let p = self.path(name);
        let x1: Vec<f64> = (0..60)
            .map(|i| match (i, odd) {
                (37, Some(v)) => v,
                _ => i as f64 / 10.0,
            })
            .collect();
        write_parquet(
            &p,
            vec![
                ("x1", Arc::new(Float64Array::from(x1)) as ArrayRef),
                (
                    "x2",
                    Arc::new(Float64Array::from(
                        (0..60).map(|i| (i % 7) as f64).collect::<Vec<_>>(),
                    )),
                ),
                (
                    "y",
                    Arc::new(Int64Array::from(
                        (0..60).map(|i| (i % 2) as i64).collect::<Vec<_>>(),
                    )),
                ),
            ],
            20,
        );
        p
    }
    /// A pipeline on `train` with extra lines in `[data]` and `[model]`.
    fn pipeline(&self, train: &Path, data: &str, model: &str) -> PathBuf {
        let p = self.path("p.toml");
        std::fs::write(
            &p,
            format!(
                "[data]\ntrain = {:?}\nlabel = \"y\"\n{data}\n[model]\nkind = \"logistic\"\n{model}\n[train]\nepochs = 3\n[output]\nmodel = {:?}\n",
                train.to_string_lossy(),
                self.s("model.json")
            ),
        )
        .unwrap();
        p
    }
    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = tidemill(args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    fn train(&self, pipeline: &Path) -> (i32, String) {
        let _ = std::fs::remove_file(self.path("model.json"));
        let r = self.run(&["train", &pipeline.to_string_lossy()]);
        if r.0 != 0 {
            assert!(
                !self.path("model.json").exists(),
                "a failed run wrote a model"
            );
        }
        r
    }
    /// A trained model file (on the clean data, `on_missing` as given).
    fn model(&self, on_missing: &str) -> PathBuf {
        let d = self.data("clean.parquet", None);
        let p = self.pipeline(&d, &format!("on_missing = {on_missing:?}"), "");
        let (code, err) = self.train(&p);
        assert_eq!(code, 0, "{err}");
        self.path("model.json")
    }
}

// ---- duplicates -------------------------------------------------------

#[test]
fn duplicate_classes_are_refused() {
    let c = Case::new();
    let d = c.data("d.parquet", None);
    let softmax = |classes: &str| {
        let p = c.pipeline(&d, &format!("classes = {classes}"), "");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("kind = \"logistic\"", "kind = \"softmax\"");
        std::fs::write(&p, text).unwrap();
        c.train(&p)
    };
    // Softmax used to accept it: 3 classes listed, 2 coefficient sets.
    let (code, err) = softmax(r#"["0", "1", "1"]"#);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("data.classes") && err.contains("listed twice"),
        "{err}"
    );
    // Two spellings of one number would both match the label value 1.
    let (code, err) = softmax(r#"["0", "1", "1.0"]"#);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("same number"), "{err}");
}

#[test]
fn duplicate_features_and_files_are_refused() {
    let c = Case::new();
    let d = c.data("d.parquet", None);
    let (code, err) = c.train(&c.pipeline(&d, "features = [\"x1\", \"x2\", \"x1\"]", ""));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("data.features") && err.contains("'x1'"),
        "{err}"
    );

    // The same file twice (once through a link) would count its rows twice.
    let link = c.path("again.parquet");
    std::os::unix::fs::symlink(&d, &link).unwrap();
    let p = c.pipeline(&d, "", "");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        &format!("train = {:?}", d.to_string_lossy()),
        &format!(
            "train = [{:?}, {:?}]",
            d.to_string_lossy(),
            link.to_string_lossy()
        ),
    );
    std::fs::write(&p, text).unwrap();
    let (code, err) = c.train(&p);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("same file"), "{err}");

    // Validation rows that are training rows.
    let p = c.pipeline(
        &d,
        &format!("validation = {{ path = {:?} }}", c.s("again.parquet")),
        "",
    );
    let (code, err) = c.train(&p);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("also a training file"), "{err}");
}

#[test]
fn duplicate_keep_columns_are_refused() {
    let c = Case::new();
    let model = c.model("error");
    let (code, err) = c.run(&[
        "predict",
        "--model",
        &model.to_string_lossy(),
        "--input",
        &c.s("clean.parquet"),
        "--output",
        &c.s("p.parquet"),
        "--keep",
        "x1,x2,x1",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--keep") && err.contains("listed twice"),
        "{err}"
    );
    assert!(!c.path("p.parquet").exists());
}

// ---- values beyond f32 ------------------------------------------------

#[test]
fn a_value_beyond_f32_is_a_bad_value_with_its_location() {
    let c = Case::new();
    let d = c.data("big.parquet", Some(1e300));
    let (code, err) = c.train(&c.pipeline(&d, "", ""));
    assert_eq!(code, 4, "{err}");
    for part in [
        "big.parquet",
        "row group 1",
        "column 'x1'",
        "row 37",
        "outside the range",
    ] {
        assert!(err.contains(part), "missing {part:?}: {err}");
    }
    // Under a fill policy it is filled like a NaN, and training succeeds.
    let (code, err) = c.train(&c.pipeline(&d, "on_missing = \"zero\"", ""));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn predict_refuses_values_beyond_f32_as_its_model_says() {
    let c = Case::new();
    let model = c.model("error");
    let big = c.data("big.parquet", Some(-1e300));
    let (code, err) = c.run(&[
        "predict",
        "--model",
        &model.to_string_lossy(),
        "--input",
        &big.to_string_lossy(),
        "--output",
        &c.s("p.parquet"),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("column 'x1', row 37") && err.contains("outside the range"),
        "{err}"
    );
    // The hint speaks of the model's policy, not of a training key to set.
    assert!(
        err.contains("model was trained with data.on_missing = \"error\""),
        "{err}"
    );
    assert!(!c.path("p.parquet").exists());

    // A skip_row model leaves that row's prediction null.
    let model = c.model("skip_row");
    let (code, err) = c.run(&[
        "predict",
        "--model",
        &model.to_string_lossy(),
        "--input",
        &big.to_string_lossy(),
        "--output",
        &c.s("p.parquet"),
    ]);
    assert_eq!(code, 0, "{err}");
    let probs = common::read_columns(&c.path("p.parquet"), &["probability"]);
    assert_eq!(probs[0].len(), 60);
    let file = std::fs::File::open(c.path("p.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let nulls: usize = reader
        .map(|b| {
            b.unwrap()
                .column_by_name("probability")
                .unwrap()
                .null_count()
        })
        .sum();
    assert_eq!(nulls, 1);
}

#[test]
fn regression_labels_beyond_f32_and_bad_labels_say_what_they_are() {
    let c = Case::new();
    let p = c.path("r.parquet");
    let y: Vec<Option<f64>> = (0..40)
        .map(|i| match i {
            5 => Some(1e300),
            _ => Some(i as f64),
        })
        .collect();
    write_parquet(
        &p,
        vec![
            (
                "x1",
                Arc::new(Float64Array::from(
                    (0..40).map(|i| i as f64).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            ("y", Arc::new(Float64Array::from(y))),
        ],
        20,
    );
    let pipe = c.pipeline(&p, "", "");
    let text = std::fs::read_to_string(&pipe)
        .unwrap()
        .replace("kind = \"logistic\"", "kind = \"linear\"");
    std::fs::write(&pipe, text).unwrap();
    let (code, err) = c.train(&pipe);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("column 'y', row 5") && err.contains("label 1e300"),
        "{err}"
    );

    // An infinite label is called infinite, a NaN one NaN; only skip_row helps.
    for (v, says) in [(f64::INFINITY, "label is inf"), (f64::NAN, "label is NaN")] {
        let y: Vec<Option<f64>> = (0..40)
            .map(|i| Some(if i == 5 { v } else { i as f64 }))
            .collect();
        write_parquet(
            &p,
            vec![
                (
                    "x1",
                    Arc::new(Float64Array::from(
                        (0..40).map(|i| i as f64).collect::<Vec<_>>(),
                    )) as ArrayRef,
                ),
                ("y", Arc::new(Float64Array::from(y))),
            ],
            20,
        );
        let (code, err) = c.train(&pipe);
        assert_eq!(code, 4, "{err}");
        assert!(err.contains(says), "{err}");
        assert!(
            err.contains("skip_row") && !err.contains("\"zero\""),
            "{err}"
        );
    }
}

#[test]
fn unsigned_categories_above_i64_max_are_tokens_not_nulls() {
    let c = Case::new();
    let p = c.path("u.parquet");
    let ids: Vec<u64> = (0..40).map(|i| u64::MAX - (i % 3)).collect();
    write_parquet(
        &p,
        vec![
            ("id", Arc::new(UInt64Array::from(ids)) as ArrayRef),
            (
                "x1",
                Arc::new(Float64Array::from(
                    (0..40).map(|i| i as f64).collect::<Vec<_>>(),
                )),
            ),
            (
                "y",
                Arc::new(Int64Array::from(
                    (0..40).map(|i| (i % 2) as i64).collect::<Vec<_>>(),
                )),
            ),
        ],
        20,
    );
    let (code, err) = c.train(&c.pipeline(&p, "categorical = [\"id\"]\nhash_bits = 4", ""));
    assert_eq!(code, 0, "{err}");
}

// ---- corrupt pages ----------------------------------------------------

#[test]
fn a_page_with_a_wrong_checksum_is_refused_naming_its_column() {
    let c = Case::new();
    let fixture = root().join("tests/fixtures/page_checksums.parquet");
    let mut bytes = std::fs::read(&fixture).unwrap();
    // Flip bytes near the end of row group 1's 'x2' chunk: page data, not
    // the page header (the header is at the chunk's start).
    let file = std::fs::File::open(&fixture).unwrap();
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap(),
    )
    .clone();
    let (start, len) = meta.row_group(1).column(1).byte_range();
    let end = (start + len) as usize;
    for b in &mut bytes[end - 40..end - 32] {
        *b ^= 0x5a;
    }
    let bad = c.path("bad.parquet");
    std::fs::write(&bad, &bytes).unwrap();
    let (code, err) = c.train(&c.pipeline(&bad, "", ""));
    assert_eq!(code, 4, "{err}");
    for part in ["bad.parquet", "row group 1", "column 'x2'", "CRC"] {
        assert!(err.contains(part), "missing {part:?}: {err}");
    }
    // The intact fixture trains.
    let (code, err) = c.train(&c.pipeline(&fixture, "", ""));
    assert_eq!(code, 0, "{err}");
}

// ---- model files that are not what they claim --------------------------

/// A named edit of a model file and what the refusal must say.
type ModelEdit = (&'static str, Box<dyn FnOnce(&mut Value)>, &'static str);

fn edit_model(model: &Path, to: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(model).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(to, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn inconsistent_model_files_are_refused_not_panicked_on() {
    let c = Case::new();
    let model = c.model("error");
    let edits: Vec<ModelEdit> = vec![
        (
            "one class",
            Box::new(|v| v["features"]["classes"] = serde_json::json!(["0"])),
            "needs 2 classes",
        ),
        (
            "dup class",
            Box::new(|v| v["features"]["classes"] = serde_json::json!(["1", "1"])),
            "listed twice",
        ),
        (
            "dup feature",
            Box::new(|v| {
                let f = v["features"]["numeric"][0].clone();
                v["features"]["numeric"].as_array_mut().unwrap().push(f);
            }),
            "listed twice",
        ),
        (
            "zero scale",
            Box::new(|v| v["features"]["numeric"][0]["scale"] = 0.0.into()),
            "scale positive",
        ),
        (
            "huge weight",
            Box::new(|v| v["coefficients"]["x1"] = 1e308.into()),
            "not finite",
        ),
        (
            "huge fill",
            Box::new(|v| v["features"]["numeric"][0]["fill"] = 1e300.into()),
            "fill",
        ),
        (
            "unknown coefficient",
            Box::new(|v| v["coefficients"]["x9"] = 1.0.into()),
            "names no numeric feature",
        ),
        (
            "hash bits",
            Box::new(|v| v["features"]["hash_bits"] = 64.into()),
            "hash_bits",
        ),
        (
            "string version",
            Box::new(|v| v["version"] = "1".into()),
            "must be a number from 1 to 3",
        ),
        (
            "huge model",
            Box::new(|v| {
                v["kind"] = "softmax".into();
                v["features"]["hash_bits"] = 28.into();
                v["features"]["categorical"] = serde_json::json!(["z"]);
                let classes: Vec<String> = (0..9000).map(|i| i.to_string()).collect();
                v["features"]["classes"] = serde_json::json!(classes);
            }),
            "more than the",
        ),
    ];
    for (name, edit, says) in edits {
        let bad = c.path(&format!("{}.json", name.replace(' ', "_")));
        edit_model(&model, &bad, edit);
        let (code, err) = c.run(&[
            "predict",
            "--model",
            &bad.to_string_lossy(),
            "--input",
            &c.s("clean.parquet"),
            "--output",
            &c.s("p.parquet"),
        ]);
        assert_eq!(code, 5, "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
        assert!(!err.contains("internal error"), "{name}: {err}");
    }
}

#[test]
fn endless_and_binary_inputs_fail_fast_in_bounded_memory() {
    let c = Case::new();
    c.model("error");
    for dev in ["/dev/urandom", "/dev/zero"] {
        if !Path::new(dev).exists() {
            continue;
        }
        let started = Instant::now();
        let (code, err) = c.run(&["eval", "--model", dev, "--input", &c.s("clean.parquet")]);
        assert_eq!(code, 5, "{dev}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{dev} took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let (code, err) = c.run(&["train", dev]);
        assert_eq!(code, 2, "{dev}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{dev} took {:?}",
            started.elapsed()
        );
    }
    // A pipeline that is not UTF-8 is a bad pipeline (2), not an I/O error (3).
    let p = c.path("latin1.toml");
    std::fs::write(&p, b"[data]\ntrain = \"caf\xe9.parquet\"\n").unwrap();
    let (code, err) = c.run(&["validate", &p.to_string_lossy()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not UTF-8"), "{err}");
}

// ---- a bug is exit 1 with a message, never 101 ------------------------

#[test]
fn a_panic_is_exit_one_with_a_report_request() {
    let c = Case::new();
    let d = c.data("d.parquet", None);
    let p = c.pipeline(&d, "", "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(["train", &p.to_string_lossy(), "--workers", "2"])
        .env("TIDEMILL_LOG", "warn")
        .env("TIDEMILL_INJECT_PANIC", "worker")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("internal error, please report it"), "{err}");
    assert!(!c.path("model.json").exists());
}

/// A worker that stops without sending its part or its failure (a bug,
/// injected): the others must not sum a step without it and go on to write
/// a model. Each fold, on threads and on 2 processes, fails the job.
#[test]
fn a_worker_that_falls_silent_fails_the_job_instead_of_training_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let model = model.to_string_lossy().to_string();
    let silence = [("TIDEMILL_INJECT_SILENCE", "1:5")];
    let limit = Duration::from_secs(60);
    for fold in ["train.fold=owners", "train.fold=every-worker"] {
        let args = [
            "train",
            "pipelines/adult.toml",
            "--set",
            fold,
            "--model-out",
            &model,
        ];
        let out = common::finish(
            common::start(&[&args[..], &["--workers", "2"]].concat(), &silence),
            limit,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{fold}, 2 threads: {err}");
        assert!(err.contains("a worker's part is missing"), "{fold}: {err}");
        assert!(!Path::new(&model).exists(), "{fold}: a model was written");
        let hosts = common::hostfile(dir.path(), 2);
        let hosts = hosts.to_string_lossy().to_string();
        let process = |i: &str| {
            let cluster = ["--processes", "2", "--process", i, "--hostfile", &hosts];
            common::start(&[&args[..], &cluster[..]].concat(), &silence)
        };
        let (p0, p1) = (process("0"), process("1"));
        let (out0, out1) = (common::finish(p0, limit), common::finish(p1, limit));
        for (i, out) in [out0, out1].iter().enumerate() {
            assert!(
                !out.status.success(),
                "{fold}, process {i} exited 0: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(!Path::new(&model).exists(), "{fold}: a model was written");
    }
}

// ---- smaller misreports -----------------------------------------------

#[test]
fn misreports_say_what_is_wrong() {
    let c = Case::new();
    let d = c.data("d.parquet", None);
    // Both kinds of validation at once.
    let (code, err) = c.train(&c.pipeline(
        &d,
        &format!(
            "validation = {{ fraction = 0.2, path = {:?} }}",
            d.to_string_lossy()
        ),
        "",
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not two") && !err.contains("untagged"),
        "{err}"
    );

    // eval on zero rows.
    let model = c.model("error");
    let empty = c.path("empty.parquet");
    write_parquet(
        &empty,
        vec![
            (
                "x1",
                Arc::new(Float64Array::from(Vec::<f64>::new())) as ArrayRef,
            ),
            ("x2", Arc::new(Float64Array::from(Vec::<f64>::new()))),
            ("y", Arc::new(Int64Array::from(Vec::<i64>::new()))),
        ],
        20,
    );
    let (code, err) = c.run(&[
        "eval",
        "--model",
        &model.to_string_lossy(),
        "--input",
        &empty.to_string_lossy(),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no rows to evaluate"), "{err}");

    // softmax on a label with one class.
    let one = c.path("one.parquet");
    write_parquet(
        &one,
        vec![
            (
                "x1",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef,
            ),
            ("y", Arc::new(StringArray::from(vec!["a", "a", "a"]))),
        ],
        20,
    );
    let p = c.pipeline(&one, "", "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("kind = \"logistic\"", "kind = \"softmax\"");
    std::fs::write(&p, text).unwrap();
    let (code, err) = c.train(&p);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("at least 2 label classes") && err.contains("[a]"),
        "{err}"
    );
}

// ---- decoders that panic on malformed input --------------------------

/// arrow-ipc slices buffers at offsets read from the input without a
/// bounds check, and panics on a damaged stream; `predict` must report the
/// input (exit 4), not crash. The damage is found by trying single-byte
/// flips in-process until the guarded reader reports a decoder failure.
#[test]
fn a_decoder_panic_on_a_damaged_ipc_stream_is_bad_input() {
    let c = Case::new();
    c.model("error");
    let clean = c.data("clean2.parquet", None);
    let file = std::fs::File::open(&clean).unwrap();
    let batches: Vec<arrow::record_batch::RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let mut stream = Vec::new();
    {
        let mut w =
            arrow::ipc::writer::StreamWriter::try_new(&mut stream, &batches[0].schema()).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }
    let damaged = c.path("damaged.arrows");
    let found = (0..stream.len()).find_map(|i| {
        [0x80u8, 0x40, 0x10].iter().find_map(|mask| {
            let mut b = stream.clone();
            b[i] ^= mask;
            std::fs::write(&damaged, &b).unwrap();
            let failed = match tidemill::io::table::open(
                &damaged.to_string_lossy(),
                &tidemill::io::table::CsvColumns::Numeric(Vec::new()),
            ) {
                Err(e) => e.to_string().contains("decoder failed"),
                Ok(input) => input
                    .filter_map(Result::err)
                    .any(|e| e.to_string().contains("decoder failed")),
            };
            failed.then_some(b)
        })
    });
    let bytes = found.expect("some single-byte flip makes the IPC decoder panic");
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, err) = c.run(&[
        "predict",
        "--model",
        &c.s("model.json"),
        "--input",
        &damaged.to_string_lossy(),
        "--output",
        &c.s("p.parquet"),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("damaged.arrows") && err.contains("malformed"),
        "{err}"
    );
    assert!(!c.path("p.parquet").exists());
}

/// A model whose size is known after the statistics scan — here 200
/// softmax classes × 2^28 hashed slots, over a terabyte — is refused with
/// its size before anything of that size is allocated (it used to end in
/// an out-of-memory abort).
#[test]
fn a_model_larger_than_memory_is_refused_before_allocating() {
    let c = Case::new();
    let p = c.path("wide.parquet");
    write_parquet(
        &p,
        vec![
            (
                "token",
                Arc::new(StringArray::from(
                    (0..400).map(|i| format!("t{}", i % 37)).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Int64Array::from(
                    (0..400).map(|i| i % 200).collect::<Vec<_>>(),
                )),
            ),
        ],
        100,
    );
    let pipe = c.pipeline(&p, "categorical = [\"token\"]\nhash_bits = 28", "");
    let text = std::fs::read_to_string(&pipe)
        .unwrap()
        .replace("kind = \"logistic\"", "kind = \"softmax\"");
    std::fs::write(&pipe, text).unwrap();
    let started = Instant::now();
    let (code, err) = c.train(&pipe);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("more than the") && err.contains("model-parallel"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A misspelt `data.exclude` left the column it meant in the features: on
/// nycflights, `arr_dealy` let `arr_delay` leak the label (AUC 0.997).
/// Early item of the ETL-stage issue, taken here because it is a silent
/// wrong model.
#[test]
fn a_misspelt_exclusion_is_refused_with_the_column_it_meant() {
    let text = std::fs::read_to_string(root().join("pipelines/nycflights.toml")).unwrap();
    let c = Case::new();
    let p = c.path("leak.toml");
    let data = root().join("datasets/nycflights13.parquet");
    let text = text
        .lines()
        .filter(|l| !l.starts_with("features") && !l.starts_with("categorical"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "train = \"datasets/nycflights13.parquet\"",
            &format!(
                "train = {:?}\nexclude = [\"arr_dealy\", \"dep_delay\"]\ncategorical = [\"carrier\", \"origin\", \"dest\"]",
                data.to_string_lossy()
            ),
        );
    std::fs::write(&p, text).unwrap();
    let (code, err) = c.run(&["validate", &p.to_string_lossy()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("data.exclude") && err.contains("did you mean 'arr_delay'"),
        "{err}"
    );
    // A misspelt feature name gets the suggestion too.
    let (code, err) = c.run(&[
        "validate",
        &p.to_string_lossy(),
        "--set",
        "data.exclude=[]",
        "--set",
        "data.categorical=[]",
        "--set",
        "data.features=[\"distnce\"]",
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("did you mean 'distance'"), "{err}");
}

/// A model file is valid JSON but 64 MB of tiny array elements: parsed
/// into a generic JSON tree it took 35 bytes of memory per byte of file
/// (a 16 GiB file would have needed half a terabyte). Typed parsing keeps
/// nothing that is not a weight, so it is refused in bounded memory.
#[test]
fn a_model_file_cannot_make_tidemill_allocate_beyond_its_size() {
    let c = Case::new();
    c.model("error");
    let zeros = "0,".repeat(32 << 20);
    for (name, body) in [
        ("junk.json", format!("{{\"format\":\"tidemill-model\",\"version\":1,\"junk\":[{zeros}0]}}")),
        ("intercept.json", format!("{{\"format\":\"tidemill-model\",\"version\":1,\"kind\":\"logistic\",\"intercept\":[{zeros}0]}}")),
    ] {
        let p = c.path(name);
        std::fs::write(&p, body).unwrap();
        let (code, err) = c.run(&["eval", "--model", &p.to_string_lossy(), "--input", &c.s("clean.parquet")]);
        assert_eq!(code, 5, "{name}: {err}");
    }
    let peak = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .max_rss(); // KiB on Linux
    assert!(peak < 400 * 1024, "a child peaked at {peak} KiB");
}

/// A file with two columns of one name: training used to take the first
/// and ignore the second, and write a model listing the feature twice
/// (which predict then refused).
#[test]
fn two_columns_of_one_name_are_refused() {
    let c = Case::new();
    let p = c.path("twice.parquet");
    let col = |k: f64| {
        Arc::new(Float64Array::from(
            (0..40).map(|i| i as f64 * k).collect::<Vec<_>>(),
        )) as ArrayRef
    };
    write_parquet(
        &p,
        vec![
            ("x", col(1.0)),
            ("x", col(-3.0)),
            (
                "y",
                Arc::new(Int64Array::from(
                    (0..40).map(|i| (i % 2) as i64).collect::<Vec<_>>(),
                )),
            ),
        ],
        20,
    );
    let (code, err) = c.train(&c.pipeline(&p, "", ""));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("column 'x'") && err.contains("2 columns of that name"),
        "{err}"
    );
    // And as a predict input.
    let model = c.model("error");
    let q = c.path("twice_in.parquet");
    write_parquet(
        &q,
        vec![("x1", col(1.0)), ("x2", col(1.0)), ("x1", col(2.0))],
        20,
    );
    let (code, err) = c.run(&[
        "predict",
        "--model",
        &model.to_string_lossy(),
        "--input",
        &q.to_string_lossy(),
        "--output",
        &c.s("p.parquet"),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("column 'x1'"), "{err}");
}
