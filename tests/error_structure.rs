//! An error found by one worker reaches the user as the same error, with
//! its location, whichever worker or process found it.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Float64Array, Int64Array};
use tidemill::cluster::Cluster;
use tidemill::error::Error;
use tidemill::spec::Pipeline;

/// 200 rows in row groups of 50, with a NaN in column `x` at file row 170
/// (row group 3); returns the pipeline.
fn nan_at_row_170(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("nan.parquet");
    let x: Vec<f64> = (0..200)
        .map(|i| if i == 170 { f64::NAN } else { i as f64 })
        .collect();
    common::write_parquet(
        &data,
        vec![
            ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
            (
                "y",
                Arc::new(Int64Array::from(
                    (0..200).map(|i| i % 2).collect::<Vec<i64>>(),
                )),
            ),
        ],
        50,
    );
    let pipeline = dir.join("nan.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"y\"\n[model]\nkind = \"logistic\"\n[optimizer]\nkind = \"lbfgs\"\n[output]\nmodel = {:?}\n",
            data.to_string_lossy(),
            dir.join("m.json").to_string_lossy()
        ),
    )
    .unwrap();
    pipeline
}

/// Regression: a worker's error was relayed as message and exit code
/// (`Error::Relayed`), so a caller of the library could no longer match on
/// the variant or read the row it names.
#[test]
fn a_workers_error_keeps_its_variant_and_location() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = nan_at_row_170(dir.path());
    for workers in [1, 2, 3] {
        let p = Pipeline::load(&pipeline, &[]).unwrap();
        let err = tidemill::train::run(
            p,
            &Cluster {
                workers,
                ..Cluster::default()
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{workers} workers trained on a NaN"));
        let Error::MissingValue { location, what, .. } = &err else {
            panic!("{workers} workers: {err:?}");
        };
        assert_eq!(location.row_group, Some(3), "{err}");
        assert_eq!(location.column.as_deref(), Some("x"), "{err}");
        assert_eq!(location.row, Some(170), "{err}");
        assert!(location.file.ends_with("nan.parquet"), "{err}");
        assert_eq!(what, "NaN", "{err}");
        assert_eq!(err.exit_code(), 4);
    }
}

/// Across two processes, both report the error with its location and exit
/// code 4, whichever of them read the row.
#[test]
fn both_processes_report_the_error_found_by_either() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = nan_at_row_170(dir.path());
    let hosts = common::hostfile(dir.path(), 2);
    let (pipeline, hosts) = (pipeline.to_string_lossy(), hosts.to_string_lossy());
    let children: Vec<_> = (0..2)
        .map(|p| {
            common::start(
                &[
                    "train",
                    &pipeline,
                    "-n",
                    "2",
                    "-p",
                    &p.to_string(),
                    "--hostfile",
                    &hosts,
                ],
                &[],
            )
        })
        .collect();
    for (p, child) in children.into_iter().enumerate() {
        let out = common::finish(child, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "process {p}: {err}");
        assert!(
            err.contains("nan.parquet, row group 3, column 'x', row 170: NaN"),
            "process {p}: {err}"
        );
    }
    assert!(!dir.path().join("m.json").exists());
}
