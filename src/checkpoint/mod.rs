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
//! What a training job saves is decided by its strategy (the strategy
//! layer's `snapshot` module); `train --resume` reads it back (the train
//! layer's `resume` module).

pub mod format;
pub mod hint;
pub mod retention;
pub mod store;
