//! A sharded job's checkpoint: what the shard owners, the collector and the
//! replicas hold at an epoch boundary, put together on worker 0 and written
//! through the [checkpoint store](crate::checkpoint); and read back for a
//! resumed job, whatever its worker count.
//!
//! Shards are cut by `train.shards`, never by the worker count, so a shard's
//! state is whole in one section and the resumed job's owners take the
//! sections of the shards they now own. Workers hold no state of their own
//! across a boundary except `model-average` replicas (their optimizer
//! state), which is why that strategy resumes only on the worker count that
//! wrote the checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::store::Store;
use crate::dataflow::scan::ScanResult;
use crate::dataflow::snapshot::{Cadence, CollectorState, Gathered, PartOf};
use crate::error::{Error, Result};
use crate::exact::Wide;
use crate::optim::lazy::Stamp;
use crate::optim::lbfgs::Lbfgs;
use crate::optim::FirstOrderState;

/// The version of the checkpoint payload: a checkpoint of another version
/// is refused with this number named.
pub const PAYLOAD_VERSION: u32 = 1;

/// One shard's state at a boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardState {
    /// Shard id.
    pub id: u32,
    /// Its parameters.
    pub params: Vec<f64>,
    /// Its optimizer state.
    pub state: FirstOrderState,
    /// The best parameters so far (early stopping).
    pub best: Option<Vec<f64>>,
    /// The coordinates that ever had a gradient, in the order they did.
    pub live: Vec<usize>,
    /// Lazy updates: the step each coordinate is current at.
    pub lazy: Option<Vec<u64>>,
}

/// L-BFGS's state at a boundary (an accepted iterate).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbfgsState {
    /// The optimizer, its history included.
    pub opt: Lbfgs,
    /// It converged at this iterate.
    pub converged: bool,
    /// Loss and gradient evaluations so far.
    pub evaluations: u64,
}

/// What every owner agrees on at a boundary (each owner runs the same
/// progression).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriverState {
    /// Epochs (L-BFGS iterations) completed.
    pub epoch: u32,
    /// The objective at the boundary, when the optimizer knows it.
    pub objective: Option<f64>,
    /// The job ends at this boundary (last epoch, early stop, converged).
    pub done: bool,
    /// Optimizer steps so far.
    pub steps: u64,
    /// Lazy updates: the clock's stamps, oldest first.
    pub clock: Vec<Stamp>,
    /// L-BFGS only.
    pub lbfgs: Option<LbfgsState>,
    /// Inside an epoch: the round to run next (epoch, step); `None` at an
    /// epoch boundary.
    pub next: Option<(u32, u64)>,
    /// Exact sum of the training losses since the last evaluation (inside
    /// an epoch: the epoch's so far).
    pub epoch_loss: Wide,
    /// Training rows behind `epoch_loss`.
    pub epoch_rows: u64,
}

/// One owner's part of a checkpoint: its shards and the common state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerState {
    /// The shards it owns.
    pub shards: Vec<ShardState>,
    /// The common state.
    pub driver: DriverState,
}

/// The content of a checkpoint file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// [`PAYLOAD_VERSION`].
    pub version: u32,
    /// The job description (canonical JSON): a checkpoint resumes only the
    /// job that wrote it.
    pub identity: String,
    /// The strategy that wrote it.
    pub strategy: String,
    /// Workers of the job that wrote it.
    pub workers: u32,
    /// The statistics scan (a resumed job does not scan again).
    pub scan: ScanResult,
    /// The collector's records and early-stopping state.
    pub collector: CollectorState,
    /// Each worker's replica state, by worker (`model-average`; empty for
    /// the other strategies).
    pub replicas: Vec<Vec<u8>>,
    /// Every shard, by id.
    pub shards: Vec<ShardState>,
    /// The common state.
    pub driver: DriverState,
}

impl Saved {
    /// Epochs (L-BFGS iterations) completed at this checkpoint.
    pub fn epoch(&self) -> u32 {
        self.driver.epoch
    }

    /// The whole parameter vector (the shards in order).
    pub fn params(&self) -> Vec<f64> {
        self.shards
            .iter()
            .flat_map(|s| s.params.iter().copied())
            .collect()
    }

    /// Per coordinate, padded to each shard's length with `pad`: what
    /// `get` gives of each shard.
    pub fn concat<T: Copy>(&self, get: impl Fn(&ShardState) -> &[T], pad: T) -> Vec<T> {
        let mut out = Vec::new();
        for s in &self.shards {
            let v = get(s);
            out.extend_from_slice(&v[..v.len().min(s.params.len())]);
            out.resize(out.len() + s.params.len().saturating_sub(v.len()), pad);
        }
        out
    }

    /// The shard `id`.
    pub fn shard(&self, id: u32) -> Option<&ShardState> {
        self.shards.get(id as usize).filter(|s| s.id == id)
    }

    /// The payload bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        bincode::serialize(self)
            .map_err(|e| Error::Internal(format!("cannot encode a checkpoint: {e}")))
    }

    /// Reads a payload back; `path` names the file in messages.
    pub fn decode(bytes: &[u8], path: &std::path::Path) -> Result<Saved> {
        let bad = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let version = bytes
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes);
        if version != Some(PAYLOAD_VERSION) {
            return Err(bad(format!(
                "its content is version {}, this tidemill reads version {PAYLOAD_VERSION}",
                version.map_or_else(|| "?".into(), |v| v.to_string())
            )));
        }
        bincode::deserialize(bytes).map_err(|e| bad(format!("its content does not read: {e}")))
    }
}

/// Writes the checkpoints of a job (on worker 0).
#[derive(Debug)]
pub struct Checkpointer {
    /// Where.
    pub store: Store,
    /// How many to keep.
    pub keep: usize,
    /// When.
    pub cadence: Cadence,
    /// The job description, canonical JSON.
    pub identity: String,
    /// The strategy's name.
    pub strategy: &'static str,
    /// Workers of the job.
    pub workers: u32,
    /// Shards of the parameter vector.
    pub shards: usize,
}

impl Checkpointer {
    /// Puts a checkpoint's parts together and writes them, numbered by
    /// their position, then drops the ones the retention policy expires.
    pub fn write(&self, gathered: Gathered, scan: &ScanResult) -> Result<PathBuf> {
        let started = Instant::now();
        let (position, epoch, parts, collector) = gathered;
        let mut shards: Vec<Option<ShardState>> = vec![None; self.shards];
        let mut driver = None;
        let mut replicas = Vec::new();
        for part in parts {
            if part.of == PartOf::Replica {
                if part.worker as usize != replicas.len() {
                    return Err(Error::Internal(format!(
                        "the replica of worker {} is missing from the checkpoint at step {position}",
                        replicas.len()
                    )));
                }
                replicas.push(part.bytes);
                continue;
            }
            let owner: OwnerState = bincode::deserialize(&part.bytes).map_err(|e| {
                Error::Internal(format!(
                    "the checkpoint part of worker {} does not read: {e}",
                    part.worker
                ))
            })?;
            for s in owner.shards {
                let id = s.id as usize;
                match shards.get_mut(id) {
                    Some(slot @ None) => *slot = Some(s),
                    _ => {
                        return Err(Error::Internal(format!(
                            "shard {id} came twice or out of range in the checkpoint at step {position}"
                        )))
                    }
                }
            }
            driver.get_or_insert(owner.driver);
        }
        let shards: Vec<ShardState> = shards
            .into_iter()
            .enumerate()
            .map(|(k, s)| {
                s.ok_or_else(|| {
                    Error::Internal(format!(
                        "shard {k} is missing from the checkpoint at step {position}"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let driver = driver.ok_or_else(|| {
            Error::Internal(format!("the checkpoint at step {position} has no owner"))
        })?;
        if !replicas.is_empty() && replicas.len() != self.workers as usize {
            return Err(Error::Internal(format!(
                "the checkpoint at step {position} holds {} of {} replicas",
                replicas.len(),
                self.workers
            )));
        }
        let saved = Saved {
            version: PAYLOAD_VERSION,
            identity: self.identity.clone(),
            strategy: self.strategy.to_string(),
            workers: self.workers,
            scan: scan.clone(),
            collector,
            replicas,
            shards,
            driver,
        };
        let payload = saved.encode()?;
        let path = self.store.write(position, &payload)?;
        self.store.prune(self.keep)?;
        tracing::info!(
            checkpoint = %path.display(),
            epoch,
            step = position,
            bytes = payload.len(),
            seconds = started.elapsed().as_secs_f64(),
            "checkpoint written"
        );
        Ok(path)
    }
}
