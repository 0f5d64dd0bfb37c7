//! Per-epoch metric records and their JSON-lines form.

use serde::{Deserialize, Serialize};

use super::Metrics;

/// One line of the metrics file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// Epoch (first-order methods) or iteration (L-BFGS), 1-based.
    pub epoch: u32,
    /// Optimizer steps taken so far.
    pub steps: u64,
    /// Seconds since training started (on the collecting worker).
    pub elapsed_s: f64,
    /// Mean training loss over the epoch's batches (first-order methods:
    /// each batch is scored before its update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Objective with penalties at the iterate (L-BFGS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objective: Option<f64>,
    /// Payload bytes exchanged between workers during the epoch (parameters
    /// received plus gradients sent, over all workers; 0 on one worker).
    pub bytes_exchanged: u64,
    /// `bytes_exchanged` per optimizer step.
    pub bytes_per_step: f64,
    /// `param-server`: shard reads during the epoch that were `i` optimizer
    /// updates behind a synchronous run, for `i = 0, 1, …` (over all workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness: Option<Vec<u64>>,
    /// Metrics on the validation rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Metrics>,
    /// True if this epoch's model is the best so far (early stopping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best: Option<bool>,
}

/// Renders records as JSON lines.
pub fn to_jsonl(records: &[EpochRecord]) -> String {
    let mut out = String::new();
    for r in records {
        if let Ok(line) = serde_json::to_string(r) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}
