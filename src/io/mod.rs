//! Files in and out: atomic writes, tabular readers and writers for
//! Parquet and Arrow IPC, paths or `-` for stdin/stdout.

pub mod atomic;
pub mod bounded;
pub mod table;
