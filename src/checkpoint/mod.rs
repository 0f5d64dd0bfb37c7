//! Checkpoint files: the storage half of fault tolerance.
//!
//! A checkpoint is an opaque payload (what the training loop saves is
//! decided above this layer) in a self-checking file ([`format`](mod@format)): a magic
//! string, a format version, the payload's length and its BLAKE3 digest.
//! [`store::Store`] writes checkpoints atomically into a directory (a
//! temporary file, fsync, rename, fsync of the directory), numbered by a
//! sequence number, and finds the newest one that is whole, skipping (with a
//! warning naming the file and what is wrong) a truncated or corrupt one.
//! Which checkpoints to keep is a policy of its own ([`retention`]), kept
//! apart from the I/O.
//!
//! Not yet here (issue 9): what the training loop saves and restores, the
//! pipeline keys, `train --resume`.

pub mod format;
pub mod retention;
pub mod store;
