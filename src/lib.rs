//! # tidemill
//!
//! Distributed training of linear models on Parquet data, written as a
//! [timely dataflow](https://docs.rs/timely).
//!
//! A job reads Parquet files, cuts them into **units** (row-group slices
//! fixed by the data), assigns units to workers (**slice** or **shuffle**),
//! and runs one timely loop per step: every worker computes exact gradient
//! partials of its rows, shard owners fold them with a pure optimizer step,
//! and the new parameters are broadcast back through a feedback edge. The
//! same binary runs on one thread, many threads, or many processes.
//!
//! ## Map
//!
//! Layers from the bottom up (each imports only those below it; see
//! `docs/architecture.md`): spec, source, plan, data, model and optim,
//! metrics, dataflow, strategy, train (with predict), cli; error, exact,
//! io, memory, cluster and checkpoint are the foundation.
//!
//! | module | what lives there |
//! |---|---|
//! | [`spec`] | the pipeline file: raw serde structs → validated spec |
//! | [`source`] | where rows come from: Parquet files, footers, units, the [`source::DataSource`] interface |
//! | [`plan`] | the job plan: files, units, columns and types every worker agrees on |
//! | [`data`] | partitioning, the windowed unit reader, decoding to `f32` blocks |
//! | [`model`] | the [`model::Model`] interface and parameter roles; the linear family: layout, losses, prediction, model file |
//! | [`optim`] | pure optimizer steps (SGD, momentum, AdaGrad, Adam, FTRL), the one step every strategy takes, lazy updates, L-BFGS/OWL-QN |
//! | [`exact`] | fixed-point sums that make results independent of worker count |
//! | [`dataflow`] | timely operators: scan, gradients, fold, metrics collector |
//! | [`strategy`] | the [`strategy::Strategy`] interface, one module per strategy, built from those operators |
//! | [`train`] | running a job; the job description processes compare |
//! | [`cluster`] | workers, processes, addresses; the handshake that starts a cluster |
//! | [`metrics`] | metric definitions and JSON-lines records |
//! | [`predict`] | scoring and evaluating tables with a saved model |
//! | [`io`] | output sets committed atomically, temporary files, signals, bounded reads; Parquet / Arrow IPC in and out |
//! | [`memory`] | known allocations checked against available memory |
//! | [`checkpoint`] | checkpoint files: self-checking format, atomic store, retention |
//!
//! ## Example
//!
//! ```no_run
//! use tidemill::{cluster::Cluster, spec::Pipeline};
//! let pipeline = Pipeline::load("pipelines/quickstart.toml".as_ref(), &[]).unwrap();
//! let report = tidemill::train::run(pipeline, &Cluster { workers: 2, ..Cluster::default() }).unwrap();
//! println!("{}", report.model.unwrap().to_json().unwrap());
//! ```

pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod data;
pub mod dataflow;
pub mod error;
pub mod exact;
pub mod incremental;
pub mod inspect;
pub mod io;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plan;
pub mod predict;
pub mod source;
pub mod spec;
pub mod strategy;
pub mod stream;
pub mod train;

pub use error::{Error, Result};
