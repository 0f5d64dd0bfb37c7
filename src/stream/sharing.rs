//! How a stream's workers share the model: the pipeline's strategy as the
//! stream runs it.
//!
//! * `allreduce` and `param-server` are **replicated**: every worker folds
//!   the exact sum of every worker's gradient partial into its whole
//!   replica, so every replica holds the same bits. `param-server` adds its
//!   bounded staleness: the gradients of step `t` are computed against the
//!   model after step `t − 1 − s` (`s = train.staleness`; `"async"` is the
//!   cap, [`crate::spec::MAX_STALENESS`]), a rule of step numbers, not of
//!   arrival times, so the model is still the same on any worker count. A
//!   batch's last step is a barrier: the next batch starts from a model
//!   with every step of it applied.
//! * `model-average` is **local**: each worker trains its own replica on
//!   the steps the leader gives it (whole steps, in turn), and at every
//!   barrier (each batch's end, and every `train.sync_every` steps if set)
//!   the replicas are replaced by their rows-weighted mean ([`average`]):
//!   the weights and the optimizer state, so every replica leaves a barrier
//!   identical (and a checkpoint taken there resumes on any worker count).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exact::Exact;
use crate::optim::lazy::Stamp;
use crate::spec::{Pipeline, Strategy};

/// How the workers share the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Every worker folds every step into its whole replica; step `t` is
    /// computed against the model after step `t − 1 − staleness`.
    Replicated {
        /// Steps a gradient may be computed behind (0: `allreduce`).
        staleness: u64,
    },
    /// Every worker steps its own replica; replicas are averaged at
    /// barriers.
    Local {
        /// Steps between averagings inside a batch (`None`: at its end).
        sync_every: Option<u64>,
    },
    /// `model-parallel`: every worker holds one block of the model and
    /// takes every row of every step (see [`super::split`]); steps are
    /// synchronous.
    Split,
}

/// Steps the leader sends ahead of the last one applied, besides what the
/// sharing itself needs in flight.
const LOOKAHEAD: u64 = 4;

impl Sharing {
    /// The sharing of `p`'s strategy.
    pub fn of(p: &Pipeline) -> Sharing {
        match p.train.strategy {
            Strategy::Allreduce => Sharing::Replicated { staleness: 0 },
            Strategy::ParamServer => Sharing::Replicated {
                staleness: u64::from(p.train.staleness.bound()),
            },
            Strategy::ModelAverage => Sharing::Local {
                sync_every: p.train.sync_every,
            },
            Strategy::ModelParallel => Sharing::Split,
        }
    }

    /// True if every worker takes every row (its block's columns of it).
    pub fn every_row(self) -> bool {
        self == Sharing::Split
    }

    /// Steps the leader may send beyond the last one applied on
    /// `workers` workers: a stale gradient needs the steps it runs ahead
    /// in flight, local replicas one step each (twice, to overlap).
    pub fn lookahead(self, workers: usize) -> u64 {
        match self {
            Sharing::Replicated { staleness } => LOOKAHEAD + staleness,
            Sharing::Local { .. } => LOOKAHEAD.max(2 * workers as u64),
            Sharing::Split => LOOKAHEAD,
        }
    }

    /// The oldest step whose result step `t` may be computed without
    /// (every step before it applied), given the latest barrier before
    /// `t`: `t − staleness` for replicas, the step after the barrier for
    /// local replicas.
    pub fn needs_applied(self, t: u64, barrier: Option<u64>) -> u64 {
        let after_barrier = barrier.map_or(0, |b| b + 1);
        match self {
            Sharing::Replicated { staleness } => t.saturating_sub(staleness).max(after_barrier),
            Sharing::Local { .. } => after_barrier,
            Sharing::Split => t,
        }
    }

    /// True if step `t` may be applied (folded into the replica) now,
    /// with the worker's computed steps up to `computed` and its latest
    /// computed barrier `barrier`: a stale gradient's model must stay as
    /// it is until the step that reads it was computed.
    pub fn may_apply(self, t: u64, computed: Option<u64>, barrier: Option<u64>) -> bool {
        match self {
            Sharing::Replicated { staleness } => {
                computed.is_some_and(|c| c >= t + staleness) || barrier.is_some_and(|b| b >= t)
            }
            Sharing::Local { .. } | Sharing::Split => true,
        }
    }

    /// The worker that trains the `k`-th step (from 0, over every pass) of
    /// a batch of a local-replica stream, whole (`None`: every worker takes
    /// its share of every step).
    pub fn trainer(self, k: u64, workers: usize) -> Option<usize> {
        match self {
            Sharing::Local { .. } => Some((k % workers.max(1) as u64) as usize),
            Sharing::Replicated { .. } | Sharing::Split => None,
        }
    }

    /// True if the step `k` (from 0) of a batch's pass is a barrier
    /// besides the batch's last step.
    pub fn syncs_after(self, k: u64) -> bool {
        match self {
            Sharing::Local {
                sync_every: Some(n),
            } => (k + 1).is_multiple_of(n.max(1)),
            _ => false,
        }
    }
}

/// A replica's weights and optimizer state at every coordinate that may
/// be non-zero (live or dense; every other one is zero in every replica),
/// with its counters: what a barrier exchanges and installs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseState {
    /// The coordinates, ascending.
    pub coords: Vec<usize>,
    /// The weights there.
    pub theta: Vec<f64>,
    /// The optimizer's first state vector there (empty if it has none).
    pub m: Vec<f64>,
    /// The second (empty if it has none).
    pub v: Vec<f64>,
    /// The live coordinates, ascending.
    pub live: Vec<usize>,
    /// The lazy clock (every coordinate current at its latest stamp).
    pub clock: Vec<Stamp>,
    /// The step count (the rate schedule's).
    pub steps: u64,
    /// The optimizer's update count (the clock's latest step).
    pub opt_t: u64,
}

/// One worker's replica at a barrier of a local-replica stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncPart {
    /// The worker.
    pub from: u32,
    /// Rows it trained on since the last barrier.
    pub rows: u64,
    /// Optimizer steps it took since then.
    pub local_steps: u64,
    /// The replica.
    pub state: SparseState,
}

/// The rows-weighted mean of the replicas that trained since the last
/// barrier (`Σ rows_w · x_w / Σ rows_w` per coordinate and vector, the
/// products rounded once and summed exactly, so the order of `parts` does
/// not matter), and whether it mixes several; a single replica that
/// trained is taken as it is. `None` if none trained: the replicas are
/// still the last barrier's, identical.
pub fn average(mut parts: Vec<SyncPart>) -> Result<Option<(SparseState, bool)>> {
    parts.retain(|p| p.rows > 0);
    parts.sort_by_key(|p| p.from);
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let base_steps = first.state.steps - first.local_steps;
    let local: u64 = parts.iter().map(|p| p.local_steps).sum();
    // The lazy clock counts the optimizer's updates (`opt_t`): both come
    // from the first replica that trained, whose every coordinate is
    // current at its clock's latest stamp, as every coordinate of the mean
    // then is. The step count (the rate schedule's) counts every replica's.
    let (clock, opt_t) = (first.state.clock.clone(), first.state.opt_t);
    if parts.len() == 1 {
        return Ok(Some((parts.remove(0).state, false)));
    }
    let mut coords: Vec<usize> = parts
        .iter()
        .flat_map(|p| p.state.coords.iter().copied())
        .collect();
    coords.sort_unstable();
    coords.dedup();
    let mut live: Vec<usize> = parts
        .iter()
        .flat_map(|p| p.state.live.iter().copied())
        .collect();
    live.sort_unstable();
    live.dedup();
    let rows: u64 = parts.iter().map(|p| p.rows).sum();
    let has_m = parts.iter().any(|p| !p.state.m.is_empty());
    let has_v = parts.iter().any(|p| !p.state.v.is_empty());
    let mut theta = vec![Exact::default(); coords.len()];
    let mut m = vec![Exact::default(); if has_m { coords.len() } else { 0 }];
    let mut v = vec![Exact::default(); if has_v { coords.len() } else { 0 }];
    let too_large = || {
        Error::Diverged {
        epoch: 0,
        step: base_steps + local,
        message: "a replica's weight or optimizer state is too large to average (after this many optimizer steps)".into(),
    }
    };
    for part in &parts {
        let (r, p) = (part.rows as f64, &part.state);
        // Both ascending: walk the part's coordinates along the union's.
        let mut k = 0;
        for (j, &c) in p.coords.iter().enumerate() {
            while coords[k] != c {
                k += 1;
            }
            let add = |acc: &mut Vec<Exact>, src: &[f64]| -> Result<()> {
                if let (Some(a), Some(&x)) = (acc.get_mut(k), src.get(j)) {
                    *a += Exact::from_f64(x * r).ok_or_else(too_large)?;
                }
                Ok(())
            };
            add(&mut theta, &p.theta)?;
            add(&mut m, &p.m)?;
            add(&mut v, &p.v)?;
        }
    }
    let mean = |acc: Vec<Exact>| acc.into_iter().map(|e| e.to_f64() / rows as f64).collect();
    Ok(Some((
        SparseState {
            coords,
            theta: mean(theta),
            m: mean(m),
            v: mean(v),
            live,
            clock,
            steps: base_steps + local,
            opt_t,
        },
        true,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(from: u32, rows: u64, coords: &[usize], theta: &[f64]) -> SyncPart {
        SyncPart {
            from,
            rows,
            local_steps: 2,
            state: SparseState {
                steps: 12,
                opt_t: 12,
                coords: coords.to_vec(),
                theta: theta.to_vec(),
                m: Vec::new(),
                v: Vec::new(),
                live: coords.to_vec(),
                clock: vec![Stamp::default()],
            },
        }
    }

    #[test]
    fn the_mean_is_weighted_by_rows_and_independent_of_order() {
        let a = part(0, 100, &[1, 5], &[1.0, 2.0]);
        let b = part(1, 300, &[5, 9], &[4.0, 8.0]);
        let (ab, mixed) = average(vec![a.clone(), b.clone()]).unwrap().unwrap();
        let (ba, _) = average(vec![b, a]).unwrap().unwrap();
        assert!(mixed);
        assert_eq!(ab, ba);
        assert_eq!(ab.coords, vec![1, 5, 9]);
        // Coordinate 1: only a is non-zero there; 9: only b.
        assert_eq!(ab.theta, vec![0.25, (200.0 + 1200.0) / 400.0, 6.0]);
        // Two workers of 2 local steps each after a barrier at 10 steps.
        assert_eq!(ab.steps, 14);
        assert_eq!(ab.opt_t, 12);
    }

    #[test]
    fn one_replica_that_trained_is_taken_as_it_is() {
        let a = part(0, 0, &[1], &[7.0]);
        let b = part(1, 3, &[2], &[0.1]);
        let (got, mixed) = average(vec![a.clone(), b]).unwrap().unwrap();
        assert!(!mixed);
        assert_eq!(got.theta, vec![0.1]);
        assert_eq!(got.steps, 12);
        assert!(average(vec![a]).unwrap().is_none());
    }

    #[test]
    fn staleness_is_a_rule_of_step_numbers() {
        let s = Sharing::Replicated { staleness: 2 };
        assert_eq!(s.needs_applied(10, None), 8);
        assert_eq!(s.needs_applied(10, Some(8)), 9);
        assert!(!s.may_apply(7, Some(8), None));
        assert!(s.may_apply(7, Some(9), None));
        assert!(s.may_apply(7, Some(8), Some(7)));
        let ar = Sharing::Replicated { staleness: 0 };
        assert_eq!(ar.needs_applied(10, Some(3)), 10);
        assert!(ar.may_apply(10, Some(10), None));
        let local = Sharing::Local {
            sync_every: Some(3),
        };
        assert_eq!(local.needs_applied(10, Some(6)), 7);
        assert_eq!(local.trainer(7, 2), Some(1));
        assert!(local.syncs_after(2) && !local.syncs_after(3));
    }
}
