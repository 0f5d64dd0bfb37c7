//! The data path: Parquet files → units → partitions → decoded blocks.
//!
//! * [`source`] resolves files and directories and checks schema agreement;
//! * [`unit`](mod@unit) cuts row groups into units (the grain of partitioning and of
//!   reproducible summation) and reads one unit with column projection;
//! * [`partition`] assigns units to workers (slice / shuffle) and orders rows;
//! * [`encode`] turns Arrow columns into `f32` feature rows and labels;
//! * [`moments`] are the feature statistics of standardisation, accurate at
//!   any magnitude and fixed by the data alone;
//! * [`hashing`] is the signed hashing trick for categorical tokens.

pub mod cache;
pub mod encode;
pub mod hashing;
pub mod load;
pub mod moments;
pub mod partition;
pub mod source;
pub mod stream;
pub mod unit;
