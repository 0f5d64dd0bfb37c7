//! `tidemill init`: a starter pipeline from a table that `validate`
//! accepts as written and that trains — on each bundled dataset's kind of
//! label, and on CSV — and its refusals.

#![allow(clippy::unwrap_used)]

mod common;

use common::{tidemill, tidemill_ok};

#[test]
fn starter_pipelines_validate_and_train_on_every_kind_of_label() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 4] = [
        ("datasets/adult.parquet", &[], "logistic"),
        ("datasets/breast_cancer.parquet", &[], "logistic"),
        ("datasets/digits.parquet", &[], "softmax"),
        (
            "datasets/california_housing.parquet",
            &["--label", "MedHouseVal"],
            "linear",
        ),
    ];
    for (data, extra, kind) in cases {
        let name = std::path::Path::new(data)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let pipeline = dir.path().join(format!("{name}.toml"));
        let p = pipeline.to_string_lossy().to_string();
        let mut args = vec!["init", data, "--out", &p];
        args.extend(extra);
        tidemill_ok(&args);
        let text = std::fs::read_to_string(&pipeline).unwrap();
        assert!(
            text.contains(&format!("kind = \"{kind}\"")),
            "{data}: {text}"
        );
        // The same text on stdout without --out.
        let mut stdout_args = vec!["init", data];
        stdout_args.extend(extra);
        assert_eq!(tidemill_ok(&stdout_args), text);
        tidemill_ok(&["validate", &p]);
        let model = dir
            .path()
            .join(format!("{name}.json"))
            .to_string_lossy()
            .to_string();
        let metrics = dir
            .path()
            .join(format!("{name}.jsonl"))
            .to_string_lossy()
            .to_string();
        let out = tidemill_ok(&[
            "train",
            &p,
            "--set",
            "train.epochs=3",
            "--model-out",
            &model,
            "--metrics-out",
            &metrics,
        ]);
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(
            summary["validation"]["rows"].as_u64().unwrap() > 0,
            "{data}: {summary}"
        );
    }
    // adult's text columns are categorical, its label's classes listed.
    let adult = std::fs::read_to_string(dir.path().join("adult.toml")).unwrap();
    assert!(
        adult.contains("\"workclass\"") && adult.contains("label = \"income\""),
        "{adult}"
    );
}

#[test]
fn a_csv_starter_keeps_ids_out_and_text_categorical() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("shop.csv");
    let mut text = String::from("order_id,city,amount,constant,bought\n");
    for i in 0..400 {
        let city = ["paris", "lyon", "nice"][i % 3];
        let amount = (i * 37 % 101) as f64 / 7.0;
        let bought = u8::from(amount + if city == "lyon" { 3.0 } else { 0.0 } > 8.0);
        text.push_str(&format!("A{i:05},{city},{amount},1,{bought}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let c = csv.to_string_lossy().to_string();
    let pipeline = tidemill_ok(&["init", &c, "--label", "bought"]);
    assert!(pipeline.contains("categorical = [\"city\"]"), "{pipeline}");
    assert!(
        pipeline.contains("exclude = [\"order_id\", \"constant\"]"),
        "{pipeline}"
    );
    assert!(pipeline.contains("kind = \"logistic\""), "{pipeline}");
    let p = dir.path().join("shop.toml");
    std::fs::write(&p, &pipeline).unwrap();
    let ps = p.to_string_lossy().to_string();
    let model = dir.path().join("m.json").to_string_lossy().to_string();
    let metrics = dir.path().join("m.jsonl").to_string_lossy().to_string();
    tidemill_ok(&[
        "train",
        &ps,
        "--model-out",
        &model,
        "--metrics-out",
        &metrics,
    ]);
    // Refusals: a misspelt label, an --out that exists.
    let out = tidemill(&["init", &c, "--label", "bougth"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("did you mean 'bought'?"), "{err}");
    let out = tidemill(&["init", &c, "--out", &ps]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), pipeline);
}

/// Labels and names a table may have: a boolean label, a label with some
/// nulls (said in a comment), a column name TOML must escape; and a
/// constant label refused.
#[test]
fn awkward_labels_and_names_give_pipelines_that_validate_or_a_clear_refusal() {
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let n = 300;
    let x: Vec<f64> = (0..n).map(|i| (i % 17) as f64).collect();
    let weird: Vec<f64> = (0..n).map(|i| (i % 5) as f64).collect();
    let flag: Vec<bool> = (0..n).map(|i| i % 17 > 8).collect();
    let file = dir.path().join("t.parquet");
    common::write_parquet(
        &file,
        vec![
            ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
            (
                "a \"quoted\\ name",
                Arc::new(Float64Array::from(weird)) as ArrayRef,
            ),
            (
                "same",
                Arc::new(Int64Array::from(vec![7i64; n])) as ArrayRef,
            ),
            ("bought", Arc::new(BooleanArray::from(flag)) as ArrayRef),
        ],
        100,
    );
    let f = file.to_string_lossy().to_string();
    let pipeline = tidemill_ok(&["init", &f, "--label", "bought"]);
    let p = dir.path().join("t.toml");
    std::fs::write(&p, &pipeline).unwrap();
    let ps = p.to_string_lossy().to_string();
    tidemill_ok(&["validate", &ps]);
    let model = dir.path().join("m.json").to_string_lossy().to_string();
    let metrics = dir.path().join("m.jsonl").to_string_lossy().to_string();
    tidemill_ok(&[
        "train",
        &ps,
        "--model-out",
        &model,
        "--metrics-out",
        &metrics,
    ]);
    let out = tidemill(&["init", &f, "--label", "same"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("fewer than two values"), "{err}");
}
