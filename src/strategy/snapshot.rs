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
use crate::dataflow::snapshot::{Cadence, CollectorState, Gathered, PartOf};
use crate::error::{Error, Result};
use crate::exact::Wide;
use crate::optim::lazy::Stamp;
use crate::optim::lbfgs::Lbfgs;
use crate::optim::vector_free;
use crate::optim::FirstOrderState;

/// The version of the checkpoint payload: a checkpoint of another version
/// is refused with this number named.
/// Version 3 keeps `model-average` replica states by replica number
/// (version 2's, one per worker, still read); version 4's scan holds the
/// weight totals and weighted moments of `data.weight` (versions 2 and 3,
/// unweighted, still read); version 5 adds sharded L-BFGS's state
/// (version 4, without it, still read).
pub const PAYLOAD_VERSION: u32 = 5;
/// The oldest payload version this tidemill reads.
pub const OLDEST_PAYLOAD_VERSION: u32 = 2;

/// One shard's state at a boundary, as a resumed job reads it (see
/// [`Stored`] for how a checkpoint keeps it).
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

/// A shard as a checkpoint keeps it: its vectors whole, or only the
/// coordinates where any of them is not zero (`at`, increasing), each
/// vector with its own length (an optimizer state may be shorter than the
/// shard, or empty). A wide hashed model's checkpoint then costs what its
/// live weights cost, not its width, and is read back bit for bit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    id: u32,
    /// `None`: every vector whole; else the coordinates kept.
    at: Option<Vec<u32>>,
    params: (u64, Vec<f64>),
    m: (u64, Vec<f64>),
    v: (u64, Vec<f64>),
    t: u64,
    best: Option<(u64, Vec<f64>)>,
    live: Vec<usize>,
    lazy: Option<(u64, Vec<u64>)>,
}

/// Sparse storage pays when at most this fraction of coordinates is kept.
const SPARSE_BELOW: usize = 4;

impl Stored {
    /// Shard `id` with these vectors (copied, whole or sparse). With
    /// `candidates` (sorted, distinct), only those coordinates are looked
    /// at: the caller vouches that every other one is quiescent (zero
    /// weight, zero state, as outside a [`crate::optim::LiveSet`] plus the
    /// dense offsets), and its lazy stamp is read back as 0, which brings
    /// a zero weight and state to the same zeros. Without, every
    /// coordinate is looked at.
    pub fn of(
        id: u32,
        params: &[f64],
        state: &FirstOrderState,
        best: Option<&[f64]>,
        live: &[usize],
        lazy: Option<&[u64]>,
        candidates: Option<&[usize]>,
    ) -> Stored {
        let n = params.len();
        let nonzero = |v: &[f64], i: usize| v.get(i).is_some_and(|x| x.to_bits() != 0);
        // Every coordinate where some vector is not (positive) zero: the
        // others are read back as zeros, bit for bit.
        let kept = |i: usize| {
            nonzero(params, i)
                || nonzero(&state.m, i)
                || nonzero(&state.v, i)
                || best.is_some_and(|b| nonzero(b, i))
                || lazy.is_some_and(|l| l.get(i).is_some_and(|&x| x != 0))
        };
        let mut at: Vec<u32> = Vec::new();
        let mut sparse = n >= 64;
        let all = 0..n;
        let look: Box<dyn Iterator<Item = usize>> = match candidates {
            Some(c) if c.len() * SPARSE_BELOW <= n => Box::new(c.iter().copied()),
            Some(_) => {
                sparse = false;
                Box::new(std::iter::empty())
            }
            None => Box::new(all),
        };
        for i in look {
            if i < n && kept(i) {
                at.push(i as u32);
                if at.len() * SPARSE_BELOW > n {
                    sparse = false;
                    break;
                }
            }
        }
        if !sparse {
            return Stored {
                id,
                at: None,
                params: (n as u64, params.to_vec()),
                m: (state.m.len() as u64, state.m.clone()),
                v: (state.v.len() as u64, state.v.clone()),
                t: state.t,
                best: best.map(|b| (b.len() as u64, b.to_vec())),
                live: live.to_vec(),
                lazy: lazy.map(|l| (l.len() as u64, l.to_vec())),
            };
        }
        let pick = |v: &[f64]| -> (u64, Vec<f64>) {
            let kept = at
                .iter()
                .map(|&i| v.get(i as usize).copied().unwrap_or(0.0));
            (v.len() as u64, kept.collect())
        };
        Stored {
            id,
            params: pick(params),
            m: pick(&state.m),
            v: pick(&state.v),
            t: state.t,
            best: best.map(pick),
            live: live.to_vec(),
            lazy: lazy.map(|l| {
                let kept = at.iter().map(|&i| l.get(i as usize).copied().unwrap_or(0));
                (l.len() as u64, kept.collect())
            }),
            at: Some(at),
        }
    }

    /// The shard's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its parameter count.
    pub fn len(&self) -> usize {
        self.params.0 as usize
    }

    /// True if it has no parameters.
    pub fn is_empty(&self) -> bool {
        self.params.0 == 0
    }

    /// The shard, whole.
    pub fn read(&self) -> ShardState {
        ShardState::from(self.clone())
    }
}

impl From<Stored> for ShardState {
    fn from(s: Stored) -> ShardState {
        fn whole<T: Copy + Default>(at: Option<&[u32]>, (len, kept): (u64, Vec<T>)) -> Vec<T> {
            let Some(at) = at else { return kept };
            let mut v = vec![T::default(); len as usize];
            for (&i, x) in at.iter().zip(kept) {
                if let Some(slot) = v.get_mut(i as usize) {
                    *slot = x;
                }
            }
            v
        }
        let at = s.at.as_deref();
        ShardState {
            id: s.id,
            params: whole(at, s.params),
            state: FirstOrderState {
                t: s.t,
                m: whole(at, s.m),
                v: whole(at, s.v),
            },
            best: s.best.map(|b| whole(at, b)),
            live: s.live,
            lazy: s.lazy.map(|l| whole(at, l)),
        }
    }
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

/// Sharded L-BFGS's state at a boundary (an accepted iterate), with the
/// pieces of `S` shards (by shard id in a checkpoint; an owner's, with
/// their ids, in its part).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardedState<S> {
    /// What every owner holds alike.
    pub common: vector_free::Common,
    /// It converged at this iterate.
    pub converged: bool,
    /// Loss and gradient evaluations so far.
    pub evaluations: u64,
    /// The shards' pieces of the vectors.
    pub pieces: S,
}

/// One owner's part of a checkpoint: its shards and the common state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerState {
    /// The shards it owns.
    pub shards: Vec<Stored>,
    /// The common state.
    pub driver: DriverState,
    /// Sharded L-BFGS: its state and this owner's pieces.
    pub sharded: Option<ShardedState<Vec<(u32, vector_free::Piece)>>>,
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
    /// Each worker's replica states, by worker (`model-average`, each
    /// worker's by replica number; empty for the other strategies).
    pub replicas: Vec<Vec<u8>>,
    /// Every shard, by id.
    pub shards: Vec<Stored>,
    /// The common state.
    pub driver: DriverState,
    /// Sharded L-BFGS: its state, every shard's pieces by id.
    pub sharded_lbfgs: Option<ShardedState<Vec<vector_free::Piece>>>,
}

impl Saved {
    /// Epochs (L-BFGS iterations) completed at this checkpoint.
    pub fn epoch(&self) -> u32 {
        self.driver.epoch
    }

    /// The whole parameter vector (the shards in order).
    pub fn params(&self) -> Vec<f64> {
        self.concat(|s| &s.params, 0.0)
    }

    /// Per coordinate, padded to each shard's length with `pad`: what
    /// `get` gives of each shard.
    pub fn concat<T: Copy>(&self, get: impl Fn(&ShardState) -> &[T], pad: T) -> Vec<T> {
        let mut out = Vec::new();
        for stored in &self.shards {
            let s = stored.read();
            let v = get(&s);
            out.extend_from_slice(&v[..v.len().min(s.params.len())]);
            out.resize(out.len() + s.params.len().saturating_sub(v.len()), pad);
        }
        out
    }

    /// The shard `id`, whole.
    pub fn shard(&self, id: u32) -> Option<ShardState> {
        self.shards
            .get(id as usize)
            .filter(|s| s.id == id)
            .map(Stored::read)
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
        if !version.is_some_and(|v| (OLDEST_PAYLOAD_VERSION..=PAYLOAD_VERSION).contains(&v)) {
            return Err(bad(format!(
                "its content is version {}, this tidemill reads versions {OLDEST_PAYLOAD_VERSION} to {PAYLOAD_VERSION}",
                version.map_or_else(|| "?".into(), |v| v.to_string())
            )));
        }
        let read = |e: bincode::Error| bad(format!("its content does not read: {e}"));
        if version < Some(4) {
            let old: SavedV3 = bincode::deserialize(bytes).map_err(read)?;
            return Ok(Saved {
                version: old.version,
                identity: old.identity,
                strategy: old.strategy,
                workers: old.workers,
                scan: old.scan.into(),
                collector: old.collector,
                replicas: old.replicas,
                shards: old.shards,
                driver: old.driver,
                sharded_lbfgs: None,
            });
        }
        if version < Some(5) {
            let old: SavedV4 = bincode::deserialize(bytes).map_err(read)?;
            return Ok(Saved {
                version: old.version,
                identity: old.identity,
                strategy: old.strategy,
                workers: old.workers,
                scan: old.scan,
                collector: old.collector,
                replicas: old.replicas,
                shards: old.shards,
                driver: old.driver,
                sharded_lbfgs: None,
            });
        }
        bincode::deserialize(bytes).map_err(read)
    }
}

/// [`Saved`] as versions 2 and 3 wrote it: the scan without weights.
#[derive(Deserialize)]
struct SavedV3 {
    version: u32,
    identity: String,
    strategy: String,
    workers: u32,
    scan: crate::dataflow::scan::ScanV3,
    collector: CollectorState,
    replicas: Vec<Vec<u8>>,
    shards: Vec<Stored>,
    driver: DriverState,
}

/// [`Saved`] as version 4 wrote it: no sharded L-BFGS.
#[derive(Deserialize)]
struct SavedV4 {
    version: u32,
    identity: String,
    strategy: String,
    workers: u32,
    scan: ScanResult,
    collector: CollectorState,
    replicas: Vec<Vec<u8>>,
    shards: Vec<Stored>,
    driver: DriverState,
}

/// A checkpoint put together, before it is written.
#[derive(Debug)]
pub struct Assembled {
    /// Its number: the optimizer's step count (L-BFGS: iterations).
    pub position: u64,
    /// Every shard, by id.
    pub shards: Vec<Stored>,
    /// The common state.
    pub driver: DriverState,
    /// The collector's state.
    pub collector: CollectorState,
    /// Each worker's replica states (empty unless workers train replicas).
    pub replicas: Vec<Vec<u8>>,
    /// Sharded L-BFGS: its state, every shard's pieces by id.
    pub sharded: Option<ShardedState<Vec<vector_free::Piece>>>,
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

    /// Puts a sharded job's checkpoint parts (one [`OwnerState`] per
    /// owner, one replica state per worker where workers keep replicas)
    /// together and writes them (see [`Self::save`]).
    pub fn write(&self, gathered: Gathered, scan: &ScanResult) -> Result<PathBuf> {
        let started = Instant::now();
        let (position, epoch, parts, collector) = gathered;
        let mut shards: Vec<Option<Stored>> = vec![None; self.shards];
        let mut driver = None;
        let mut replicas = Vec::new();
        let mut sharded: Option<ShardedState<Vec<Option<vector_free::Piece>>>> = None;
        for part in parts {
            if part.of == PartOf::Replica {
                if part.worker as usize != replicas.len() {
                    return Err(Error::Internal(format!(
                        "the replica of worker {} is missing from the checkpoint at step {position}",
                        replicas.len()
                    )));
                }
                if part.bytes.is_empty() {
                    // Its state did not encode: fail now, not at a resume.
                    return Err(Error::Internal(format!(
                        "the replica state of worker {} did not encode for the checkpoint at step {position}",
                        part.worker
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
            if let Some(part) = owner.sharded {
                let all = sharded.get_or_insert_with(|| ShardedState {
                    common: part.common,
                    converged: part.converged,
                    evaluations: part.evaluations,
                    pieces: vec![None; self.shards],
                });
                for (id, piece) in part.pieces {
                    match all.pieces.get_mut(id as usize) {
                        Some(slot @ None) => *slot = Some(piece),
                        _ => {
                            return Err(Error::Internal(format!(
                                "the L-BFGS pieces of shard {id} came twice or out of range in the checkpoint at step {position}"
                            )))
                        }
                    }
                }
            }
        }
        let sharded = match sharded {
            None => None,
            Some(s) => {
                let pieces = s.pieces.into_iter().enumerate().map(|(k, p)| {
                    p.ok_or_else(|| {
                        Error::Internal(format!(
                            "the L-BFGS pieces of shard {k} are missing from the checkpoint at step {position}"
                        ))
                    })
                });
                Some(ShardedState {
                    common: s.common,
                    converged: s.converged,
                    evaluations: s.evaluations,
                    pieces: pieces.collect::<Result<_>>()?,
                })
            }
        };
        let shards: Vec<Stored> = shards
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
        if driver.epoch != epoch {
            return Err(Error::Internal(format!(
                "the owners' state after epoch {} came for the checkpoint after epoch {epoch}",
                driver.epoch
            )));
        }
        let replicated = self.strategy == "model-average";
        if (replicated || !replicas.is_empty()) && replicas.len() != self.workers as usize {
            return Err(Error::Internal(format!(
                "the checkpoint at step {position} holds {} of {} replicas",
                replicas.len(),
                self.workers
            )));
        }
        let state = Assembled {
            position,
            shards,
            driver,
            collector,
            replicas,
            sharded,
        };
        self.save(started, state, scan)
    }

    /// Writes a checkpoint put together since `started` as checkpoint
    /// number `position`, then drops the ones the retention policy expires.
    pub fn save(&self, started: Instant, state: Assembled, scan: &ScanResult) -> Result<PathBuf> {
        let Assembled {
            position,
            shards,
            driver,
            collector,
            replicas,
            sharded,
        } = state;
        let epoch = driver.epoch;
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
            sharded_lbfgs: sharded,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn round_trip(params: Vec<f64>, m: Vec<f64>, lazy: Option<Vec<u64>>) -> (bool, ShardState) {
        let state = FirstOrderState {
            t: 7,
            m,
            v: Vec::new(),
        };
        let best = Some(params.iter().map(|x| x * 2.0).collect::<Vec<f64>>());
        let stored = Stored::of(
            3,
            &params,
            &state,
            best.as_deref(),
            &[5, 1],
            lazy.as_deref(),
            None,
        );
        let sparse = stored.at.is_some();
        let bytes = bincode::serialize(&stored).expect("encodes");
        let back: Stored = bincode::deserialize(&bytes).expect("decodes");
        let s = back.read();
        assert_eq!(s.id, 3);
        assert_eq!(bits(&s.params), bits(&params));
        assert_eq!(bits(&s.state.m), bits(&state.m), "lengths and bits kept");
        assert!(s.state.v.is_empty() && s.state.t == 7);
        assert_eq!(s.best.as_deref().map(bits), best.as_deref().map(bits));
        assert_eq!(s.live, [5, 1], "the order coordinates became live in");
        assert_eq!(s.lazy, lazy);
        (sparse, s)
    }

    #[test]
    fn a_mostly_zero_shard_is_kept_sparse_and_read_back_bit_for_bit() {
        let mut params = vec![0.0; 1000];
        params[1] = -0.0; // not positive zero: kept
        params[5] = 0.25;
        let mut m = vec![0.0; 600]; // shorter than the shard
        m[599] = 1e-300;
        let mut lazy = vec![0; 10];
        lazy[9] = 4;
        let (sparse, _) = round_trip(params, m, Some(lazy));
        assert!(sparse);
    }

    #[test]
    fn candidates_bound_what_a_sparse_shard_looks_at() {
        let mut params = vec![0.0; 1000];
        params[7] = 1.5;
        params[900] = 2.5; // not a candidate: the caller vouched it is zero
        let state = FirstOrderState::default();
        let stored = Stored::of(0, &params, &state, None, &[7], None, Some(&[3, 7]));
        assert_eq!(stored.at.as_deref(), Some(&[7u32][..]));
        let whole = Stored::of(0, &params, &state, None, &[7], None, Some(&[1; 300]));
        assert!(whole.at.is_none(), "many candidates: kept whole");
    }

    #[test]
    fn a_dense_shard_is_kept_whole() {
        let params: Vec<f64> = (0..100).map(|i| f64::from(i) + 0.5).collect();
        let (sparse, _) = round_trip(params, Vec::new(), None);
        assert!(!sparse);
    }
}
