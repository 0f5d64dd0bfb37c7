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
//!
//! A `model-parallel` checkpoint has the same content with one section, the
//! whole parameter vector, put together from the workers' blocks by global
//! coordinate ([`super::blocks`]).

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Checkpointing;
use crate::checkpoint::store::Store;
use crate::dataflow::scan::ScanResult;
use crate::dataflow::snapshot::{Cadence, CollectorState, OwnerPart};
use crate::error::{Error, Result};
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
    /// The writer of a job's checkpoints, on the worker that writes them
    /// (worker 0, the one whose `checkpoints` hold the store): `strategy`
    /// on `workers` workers, the parameter vector in `shards` sections.
    pub fn of(
        checkpoints: Option<&Checkpointing>,
        strategy: &'static str,
        workers: usize,
        shards: usize,
    ) -> Option<Checkpointer> {
        let c = checkpoints?;
        c.store.clone().map(|store| Checkpointer {
            store,
            keep: c.keep,
            cadence: c.cadence,
            identity: c.identity.to_string(),
            strategy,
            workers: workers as u32,
            shards,
        })
    }

    /// Puts a boundary's parts (one [`OwnerState`] per owner) together and
    /// writes them as checkpoint number `epoch` (see [`Self::save`]).
    pub fn write(
        &self,
        epoch: u32,
        parts: Vec<OwnerPart>,
        collector: CollectorState,
        scan: &ScanResult,
    ) -> Result<PathBuf> {
        let started = Instant::now();
        let mut shards: Vec<Option<ShardState>> = vec![None; self.shards];
        let mut driver = None;
        for part in parts {
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
                            "shard {id} came twice or out of range in the checkpoint after epoch {epoch}"
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
                        "shard {k} is missing from the checkpoint after epoch {epoch}"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let driver = driver.ok_or_else(|| {
            Error::Internal(format!("the checkpoint after epoch {epoch} has no owner"))
        })?;
        self.save(started, shards, driver, collector, scan)
    }

    /// Writes the state after `driver.epoch` epochs (put together since
    /// `started`) as checkpoint number `driver.epoch`, then drops the ones
    /// the retention policy expires.
    pub fn save(
        &self,
        started: Instant,
        shards: Vec<ShardState>,
        driver: DriverState,
        collector: CollectorState,
        scan: &ScanResult,
    ) -> Result<PathBuf> {
        let epoch = driver.epoch;
        let saved = Saved {
            version: PAYLOAD_VERSION,
            identity: self.identity.clone(),
            strategy: self.strategy.to_string(),
            workers: self.workers,
            scan: scan.clone(),
            collector,
            shards,
            driver,
        };
        let payload = saved.encode()?;
        let path = self.store.write(u64::from(epoch), &payload)?;
        self.store.prune(self.keep)?;
        tracing::info!(
            checkpoint = %path.display(),
            epoch,
            bytes = payload.len(),
            seconds = started.elapsed().as_secs_f64(),
            "checkpoint written"
        );
        Ok(path)
    }
}
