//! Distribution strategies: variations of one timely training loop.
//!
//! * [`allreduce`] — synchronous: every step sums all workers' gradients,
//!   folded by shard owners, parameters broadcast back.
//!
//! [`driver`] is the owners' round state machine shared by the strategies.

pub mod allreduce;
pub mod driver;
