//! Files in and out: output sets written atomically (temporary files,
//! sweeps, signals), Parquet footers, tabular readers and writers for Parquet and Arrow IPC,
//! paths or `-` for stdin/stdout, and the Prometheus metrics endpoint.

pub mod atomic;
pub mod bounded;
pub mod dir_lock;
pub mod footer;
pub mod guard;
pub mod metrics_http;
pub mod signals;
pub mod sweep;
pub mod table;
pub mod target;
pub mod temp;
