//! A `model-parallel` job's checkpoint: the blocks' state by global
//! coordinate.
//!
//! Blocks are cut by the worker count, so a checkpoint holds no block:
//! each worker's part maps its block's state to the coordinates of the
//! whole parameter vector ([`encode`]), worker 0 puts the parts together
//! into one section covering the vector ([`merge`]: parameters, optimizer
//! moments, best values, lazy stamps, the live set in global indices; the
//! step count, clock and moment count common to the blocks), and a resumed
//! job cuts it into its own blocks again ([`split`]).
//!
//! The one local parameter without a global coordinate is the intercept
//! slot of each output in a block other than block 0: its gradient is
//! always zero, so it stays idle (zero weight and moments, live and current
//! since the first step). [`encode`] checks that it is, and [`split`]
//! restores it so; a block whose slot is not idle cannot be cut again
//! exactly and its checkpoint fails.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::snapshot::{DriverState, Saved, ShardState};
use crate::dataflow::margins::BlockState;
use crate::dataflow::snapshot::Part;
use crate::error::{Error, Result};
use crate::model::block::FeatureBlock;
use crate::optim::lazy::Clock;
use crate::optim::FirstOrderState;

/// One worker's part: its block's state at the coordinates `coords`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlockPart {
    /// The global coordinates of the block's parameters (idle slots left
    /// out), as runs in the block's order.
    coords: Vec<Range<usize>>,
    /// The values at those coordinates, in that order (`live`: global
    /// indices; `id`: the worker).
    values: ShardState,
    /// The state common to the blocks.
    driver: DriverState,
}

/// The global coordinates of `block`'s parameters as runs of consecutive
/// coordinates, each with the local index it starts at (ascending in both).
fn runs(block: &FeatureBlock) -> Vec<(usize, Range<usize>)> {
    let mut out: Vec<(usize, Range<usize>)> = Vec::new();
    for i in 0..block.len() {
        let Some(g) = block.global(i) else { continue };
        match out.last_mut() {
            Some((start, r)) if r.end == g && *start + r.len() == i => r.end += 1,
            _ => out.push((i, g..g + 1)),
        }
    }
    out
}

/// Local indices of `block` with their global coordinates, in order.
fn pairs(block: &FeatureBlock) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..block.len()).filter_map(|i| block.global(i).map(|g| (i, g)))
}

/// The local index of global coordinate `g` in the block of `runs`.
fn local(runs: &[(usize, Range<usize>)], g: usize) -> Option<usize> {
    let k = runs.partition_point(|(_, r)| r.end <= g);
    runs.get(k)
        .filter(|(_, r)| r.contains(&g))
        .map(|(start, r)| start + g - r.start)
}

/// A moment vector (`m` or `v`) of `len` coordinates or none at all.
fn moments_of(what: &str, m: &[f64], len: usize) -> Result<bool> {
    match m.len() {
        0 => Ok(false),
        n if n == len => Ok(true),
        n => Err(Error::Internal(format!(
            "a block's {what} holds {n} values for {len} parameters"
        ))),
    }
}

/// Checks that the idle slot `i` of a block whose optimizer took `t` steps
/// is what [`split`] restores, naming `worker` otherwise.
fn check_idle(s: &BlockState, live: &[bool], i: usize, worker: usize) -> Result<()> {
    let t = s.opt.t;
    let zero = |v: Option<&f64>| v.is_none_or(|x| x.to_bits() == 0);
    let idle = s.theta[i].to_bits() == 0
        && zero(s.opt.m.get(i))
        && zero(s.opt.v.get(i))
        && s.best.as_ref().is_none_or(|b| zero(b.get(i)))
        && s.lazy
            .as_ref()
            .is_none_or(|l| l.get(i).copied().unwrap_or(0) == t)
        && live[i] == (t > 0);
    if idle {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "the intercept slot {i} of worker {worker}'s block is not idle: its state cannot be cut into blocks again, so no checkpoint is taken"
        )))
    }
}

/// Worker `worker`'s part of a checkpoint: the state of its `block` by
/// global coordinate (see the module docs), or why there is none, which
/// [`merge`] then fails with (whichever worker's failure reaches the job
/// first, it names the cause).
pub fn encode(block: &FeatureBlock, worker: usize, s: &BlockState) -> Vec<u8> {
    let part = block_part(block, worker, s).map_err(|e| e.to_string());
    // An encoding failure leaves the part empty: merge fails naming the
    // worker.
    bincode::serialize(&part).unwrap_or_default()
}

fn block_part(block: &FeatureBlock, worker: usize, s: &BlockState) -> Result<BlockPart> {
    let len = block.len();
    if s.theta.len() != len {
        return Err(Error::Internal(format!(
            "worker {worker}'s block holds {} parameters, not {len}",
            s.theta.len()
        )));
    }
    let (has_m, has_v) = (
        moments_of("first moments", &s.opt.m, len)?,
        moments_of("second moments", &s.opt.v, len)?,
    );
    let mut live = vec![false; len];
    for &i in &s.live {
        match live.get_mut(i) {
            Some(l) => *l = true,
            None => {
                return Err(Error::Internal(format!(
                    "worker {worker}'s live set names parameter {i} of {len}"
                )))
            }
        }
    }
    for i in (0..len).filter(|&i| block.global(i).is_none()) {
        check_idle(s, &live, i, worker)?;
    }
    let at = |v: &[f64]| pairs(block).map(|(i, _)| v[i]).collect::<Vec<f64>>();
    let values = ShardState {
        id: worker as u32,
        params: at(&s.theta),
        state: FirstOrderState {
            t: s.opt.t,
            m: if has_m { at(&s.opt.m) } else { Vec::new() },
            v: if has_v { at(&s.opt.v) } else { Vec::new() },
        },
        best: match &s.best {
            Some(b) if b.len() == len => Some(at(b)),
            Some(b) => {
                return Err(Error::Internal(format!(
                    "worker {worker}'s best values hold {} parameters, not {len}",
                    b.len()
                )))
            }
            None => None,
        },
        live: s.live.iter().filter_map(|&i| block.global(i)).collect(),
        lazy: s.lazy.as_ref().map(|l| {
            pairs(block)
                .map(|(i, _)| l.get(i).copied().unwrap_or(0))
                .collect()
        }),
    };
    Ok(BlockPart {
        coords: runs(block).into_iter().map(|(_, r)| r).collect(),
        values,
        driver: DriverState {
            epoch: s.epoch,
            objective: None,
            done: s.done,
            steps: s.steps,
            clock: s.clock.clone(),
            lbfgs: None,
            next: s.next.map(|step| (s.epoch, step)),
            epoch_loss: s.epoch_loss,
            epoch_rows: s.epoch_rows,
        },
    })
}

/// Puts the parts of every block (ordered by worker) together: one section
/// covering the `len` parameters by global coordinate, and the state
/// common to the blocks, which every part must agree on.
///
/// A block without hashed slots takes eager steps even under lazy
/// updates: its coordinates are current at every step (stamp `t` in the
/// section) and its clock never ticks (the common clock is the lazy
/// blocks').
pub fn merge(len: usize, parts: &[Part]) -> Result<(ShardState, DriverState)> {
    let bad = |message: String| Error::Internal(format!("a model-parallel checkpoint: {message}"));
    let blocks: Vec<BlockPart> = parts
        .iter()
        .map(|part| {
            let w = part.worker;
            match bincode::deserialize::<std::result::Result<BlockPart, String>>(&part.bytes) {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(why)) => Err(bad(format!("worker {w}'s block was not saved: {why}"))),
                Err(e) => Err(bad(format!("the part of worker {w} does not read: {e}"))),
            }
        })
        .collect::<Result<_>>()?;
    let Some(first) = blocks.first() else {
        return Err(bad("no block".into()));
    };
    let (t, d) = (first.values.state.t, &first.driver);
    let clock = blocks
        .iter()
        .find(|b| b.values.lazy.is_some())
        .map_or(&d.clock, |b| &b.driver.clock);
    let full = |present: bool| if present { vec![0.0; len] } else { Vec::new() };
    let mut all = ShardState {
        id: 0,
        params: vec![0.0; len],
        state: FirstOrderState {
            t,
            m: full(!first.values.state.m.is_empty()),
            v: full(!first.values.state.v.is_empty()),
        },
        best: first.values.best.as_ref().map(|_| vec![0.0; len]),
        live: Vec::new(),
        lazy: blocks
            .iter()
            .any(|b| b.values.lazy.is_some())
            .then(|| vec![t; len]),
    };
    let mut seen = vec![false; len];
    for (p, part) in blocks.iter().zip(parts) {
        let (v, w) = (&p.values, part.worker);
        let n = v.params.len();
        let sized = |m: &[f64], kept: &[f64]| m.len() == n * usize::from(!kept.is_empty());
        let agree = p.coords.iter().map(ExactSizeIterator::len).sum::<usize>() == n
            && (p.driver.epoch, p.driver.done, p.driver.steps) == (d.epoch, d.done, d.steps)
            && (p.driver.next, p.driver.epoch_loss, p.driver.epoch_rows)
                == (d.next, d.epoch_loss, d.epoch_rows)
            && (v.lazy.is_none() || &p.driver.clock == clock)
            && v.state.t == t
            && sized(&v.state.m, &all.state.m)
            && sized(&v.state.v, &all.state.v)
            && v.best.as_ref().map(Vec::len) == all.best.as_ref().map(|_| n)
            && v.lazy.as_ref().is_none_or(|l| l.len() == n);
        if !agree {
            return Err(bad(format!(
                "worker {w}'s block disagrees with worker {}'s on its size, the steps, the position, the epoch's loss, the clock or the state kept",
                parts[0].worker
            )));
        }
        for (k, g) in p.coords.iter().cloned().flatten().enumerate() {
            match seen.get_mut(g) {
                Some(s @ false) => *s = true,
                _ => {
                    return Err(bad(format!(
                        "coordinate {g} of {len} came twice or out of range (worker {w})"
                    )))
                }
            }
            all.params[g] = v.params[k];
            if let Some(m) = v.state.m.get(k) {
                all.state.m[g] = *m;
            }
            if let Some(x) = v.state.v.get(k) {
                all.state.v[g] = *x;
            }
            if let (Some(b), Some(to)) = (&v.best, all.best.as_mut()) {
                to[g] = b[k];
            }
            if let (Some(l), Some(to)) = (&v.lazy, all.lazy.as_mut()) {
                to[g] = l[k];
            }
        }
        all.live.extend_from_slice(&v.live);
    }
    if let Some(g) = seen.iter().position(|&s| !s) {
        return Err(bad(format!("coordinate {g} of {len} is in no block")));
    }
    let driver = DriverState {
        clock: clock.clone(),
        ..d.clone()
    };
    Ok((all, driver))
}

/// The state of `block` in the checkpoint `saved` (see the module docs),
/// which takes lazy updates (`lazy`) or eager steps.
pub fn split(saved: &Saved, block: &FeatureBlock, lazy: bool) -> Result<BlockState> {
    let len = block.layout.len();
    let bad = |message: String| {
        Error::Internal(format!(
            "the checkpoint does not hold a model-parallel job's state: {message}"
        ))
    };
    let (Some(all), [_]) = (saved.shard(0), saved.shards.as_slice()) else {
        return Err(bad(format!("{} sections, not one", saved.shards.len())));
    };
    let t = all.state.t;
    let fits = |v: &[f64]| v.is_empty() || v.len() == len;
    if all.params.len() != len
        || !fits(&all.state.m)
        || !fits(&all.state.v)
        || all.best.as_ref().is_some_and(|b| b.len() != len)
        || all.lazy.as_ref().is_some_and(|l| l.len() != len)
    {
        return Err(bad(format!(
            "its vectors do not hold the {len} parameters of this job"
        )));
    }
    if (lazy && all.lazy.is_none()) || saved.driver.lbfgs.is_some() {
        return Err(bad("it was taken with another optimizer setting".into()));
    }
    let d = &saved.driver;
    let next = match d.next {
        Some((epoch, step)) if epoch == d.epoch => Some(step),
        Some((epoch, _)) => {
            return Err(bad(format!(
                "it stands inside epoch {} after {} epochs",
                epoch + 1,
                d.epoch
            )))
        }
        None => None,
    };
    // Idle slots: zero, and live and current since the first step.
    let gather = |v: &[f64]| -> Vec<f64> {
        (0..block.len())
            .map(|i| block.global(i).map_or(0.0, |g| v[g]))
            .collect()
    };
    let maybe = |v: &[f64]| if v.is_empty() { Vec::new() } else { gather(v) };
    let runs = runs(block);
    let mut live: Vec<usize> = match t > 0 {
        true => (0..block.len())
            .filter(|&i| block.global(i).is_none())
            .collect(),
        false => Vec::new(),
    };
    live.extend(all.live.iter().filter_map(|&g| local(&runs, g)));
    Ok(BlockState {
        epoch: saved.driver.epoch,
        done: saved.driver.done,
        theta: gather(&all.params),
        opt: FirstOrderState {
            t,
            m: maybe(&all.state.m),
            v: maybe(&all.state.v),
        },
        best: all.best.as_deref().map(gather),
        live,
        lazy: all.lazy.as_ref().filter(|_| lazy).map(|l| {
            (0..block.len())
                .map(|i| block.global(i).map_or(t, |g| l[g]))
                .collect()
        }),
        // An eager block's clock never ticks.
        clock: match lazy {
            true => saved.driver.clock.clone(),
            false => Clock::default().stamps(),
        },
        steps: d.steps,
        next,
        epoch_loss: d.epoch_loss,
        epoch_rows: d.epoch_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::scan::ScanResult;
    use crate::dataflow::snapshot::CollectorState;
    use crate::dataflow::snapshot::PartOf;
    use crate::model::Layout;
    use crate::optim::lazy::Stamp;
    use crate::strategy::snapshot::Stored;
    use crate::strategy::snapshot::PAYLOAD_VERSION;

    const LAYOUTS: [Layout; 4] = [
        Layout { k: 1, d: 10, p: 10 },
        Layout {
            k: 3,
            d: 4 + 64,
            p: 4,
        },
        Layout { k: 2, d: 5, p: 2 },
        Layout {
            k: 1,
            d: 6 + 4,
            p: 6,
        },
    ];

    /// A block's state after `t` steps, with a value of its own at every
    /// coordinate that has one (idle slots idle), lazy if it owns hashed
    /// slots and `lazy`.
    fn state(block: &FeatureBlock, t: u64, lazy: bool) -> BlockState {
        let value = |i: usize, salt: f64| {
            block
                .global(i)
                .map_or(0.0, |g| (g as f64 + salt) * 0.001 - 0.01)
        };
        let n = block.len();
        let idle: Vec<usize> = (0..n).filter(|&i| block.global(i).is_none()).collect();
        // Idle slots became live first; the others in a scrambled order.
        let mut live = idle.clone();
        live.extend((0..n).filter(|i| !idle.contains(i) && i % 3 != 1).rev());
        let lazy = lazy && !block.hashed.is_empty();
        let clock = match lazy {
            true => vec![Stamp::default(); 2],
            false => crate::optim::lazy::Clock::default().stamps(),
        };
        BlockState {
            epoch: 2,
            done: false,
            theta: (0..n).map(|i| value(i, 0.5)).collect(),
            opt: FirstOrderState {
                t,
                m: (0..n).map(|i| value(i, 0.25)).collect(),
                v: (0..n).map(|i| value(i, 0.75).abs()).collect(),
            },
            best: Some((0..n).map(|i| value(i, 0.125)).collect()),
            live,
            lazy: lazy.then(|| {
                (0..n)
                    .map(|i| block.global(i).map_or(t, |g| t - (g as u64 % 3)))
                    .collect()
            }),
            clock,
            steps: 40,
            // Inside the third epoch, its loss so far not a round number.
            next: Some(5),
            epoch_loss: crate::exact::Wide::from_f64(12.375).unwrap_or_default(),
            epoch_rows: 5 * 64,
        }
    }

    fn parts(layout: Layout, workers: usize, lazy: bool) -> Vec<Part> {
        FeatureBlock::split(layout, workers)
            .iter()
            .enumerate()
            .map(|(w, b)| Part {
                position: 0,
                of: PartOf::Owner,
                epoch: 2,
                worker: w as u32,
                bytes: encode(b, w, &state(b, 7, lazy)),
            })
            .collect()
    }

    fn saved(shard: ShardState, driver: DriverState, workers: u32) -> Saved {
        Saved {
            version: PAYLOAD_VERSION,
            identity: String::new(),
            strategy: "model-parallel".into(),
            workers,
            scan: ScanResult::default(),
            collector: CollectorState::default(),
            replicas: Vec::new(),
            shards: vec![Stored::of(
                shard.id,
                &shard.params,
                &shard.state,
                shard.best.as_deref(),
                &shard.live,
                shard.lazy.as_deref(),
                None,
            )],
            driver,
            sharded_lbfgs: None,
        }
    }

    /// Each block's state goes to the whole vector and back unchanged, on
    /// any worker count, with and without lazy updates (blocks without
    /// hashed slots step eagerly in a lazy job).
    #[test]
    fn blocks_go_to_the_whole_vector_and_back_bit_for_bit() {
        for layout in LAYOUTS {
            for workers in 1..6 {
                for lazy in [false, true] {
                    let parts = parts(layout, workers, lazy);
                    let (all, driver) = merge(layout.len(), &parts).unwrap();
                    assert_eq!(all.params.len(), layout.len());
                    let back = saved(all, driver, workers as u32);
                    for b in &FeatureBlock::split(layout, workers) {
                        let lazy = lazy && !b.hashed.is_empty();
                        assert_eq!(
                            split(&back, b, lazy).unwrap(),
                            state(b, 7, lazy),
                            "{layout:?} on {workers}, lazy {lazy}"
                        );
                    }
                }
            }
        }
    }

    /// The whole vector cut into another worker count's blocks holds each
    /// coordinate's values.
    #[test]
    fn the_whole_vector_cuts_into_any_blocks() {
        let layout = LAYOUTS[1];
        let (all, driver) = merge(layout.len(), &parts(layout, 4, false)).unwrap();
        let whole = all.params.clone();
        let back = saved(all, driver, 4);
        for workers in 1..6 {
            for b in &FeatureBlock::split(layout, workers) {
                let s = split(&back, b, false).unwrap();
                for (i, w) in s.theta.iter().enumerate() {
                    let want = b.global(i).map_or(0.0, |g| whole[g]);
                    assert_eq!(w.to_bits(), want.to_bits());
                }
            }
        }
    }

    #[test]
    fn a_block_whose_intercept_slot_moved_takes_no_checkpoint() {
        let layout = LAYOUTS[1];
        let block = &FeatureBlock::split(layout, 2)[1];
        let slot = (0..block.len())
            .find(|&i| block.global(i).is_none())
            .unwrap();
        let mut moved = state(block, 7, false);
        moved.opt.m[slot] = 1e-300;
        let mut dead = state(block, 7, false);
        dead.live.retain(|&i| i != slot);
        for s in [moved, dead] {
            let mut parts = parts(layout, 2, false);
            parts[1].bytes = encode(block, 1, &s);
            let e = merge(layout.len(), &parts).unwrap_err().to_string();
            assert!(
                e.contains("worker 1's block was not saved") && e.contains("not idle"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_missing_repeated_or_disagreeing_block_is_refused() {
        let layout = LAYOUTS[2];
        let mut parts = parts(layout, 3, true);
        let mut missing = parts.clone();
        missing.remove(1);
        let e = merge(layout.len(), &missing).unwrap_err().to_string();
        assert!(e.contains("is in no block"), "{e}");
        let mut twice = parts.clone();
        twice[1] = twice[0].clone();
        let e = merge(layout.len(), &twice).unwrap_err().to_string();
        assert!(e.contains("came twice"), "{e}");
        let b = &FeatureBlock::split(layout, 3)[2];
        parts[2].bytes = encode(b, 2, &state(b, 8, true));
        let e = merge(layout.len(), &parts).unwrap_err().to_string();
        assert!(e.contains("disagrees"), "{e}");
    }
}
