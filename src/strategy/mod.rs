//! Distribution strategies: variations of one timely training loop.
//!
//! * [`allreduce`] — synchronous: every step sums all workers' gradients,
//!   folded by shard owners, parameters broadcast back. The same loop runs
//!   `model-average`: workers step local replicas for `sync_every` steps
//!   (see `dataflow::gradient::LocalTraining`) and owners average them.
//!   And `param-server`: the feedback edge delays parameters by
//!   `staleness + 1` rounds, so workers run up to `staleness` steps ahead of
//!   the slowest, reading the freshest shards that have arrived.
//!
//! * [`model_parallel`] — features and weights split into one block per
//!   worker; partial margins are exchanged instead of parameters.
//!
//! [`driver`] is the owners' round state machine shared by the strategies.

pub mod allreduce;
pub mod driver;
pub mod model_parallel;
