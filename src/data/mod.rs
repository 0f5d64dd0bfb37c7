//! The data path above the source: units → partitions → decoded blocks.
//!
//! * [`partition`] assigns units to workers (slice / shuffle), orders rows
//!   and fixes the windows units are read in;
//! * [`window`] is the one reader of a unit: decoded window by window,
//!   split into training and validation rows;
//! * [`cache`] holds a worker's units for an epoch (kept, or streamed with
//!   [`stream`]);
//! * [`encode`] turns Arrow columns into `f32` feature rows and labels;
//! * [`file_rows`] says where a block's rows are in their file (a run of
//!   consecutive rows, or each listed);
//! * [`moments`] are the feature statistics of standardisation, accurate at
//!   any magnitude and fixed by the data alone;
//! * [`hashing`] is the signed hashing trick for categorical tokens.
//!
//! Files, footers and units live below, in [`crate::source`].

pub mod cache;
pub mod encode;
pub mod file_rows;
pub mod hashing;
pub mod labels;
pub mod moments;
pub mod partition;
pub mod stream;
pub mod window;
