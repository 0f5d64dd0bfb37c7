//! `train --resume`: finds the newest whole checkpoint of the job in its
//! checkpoint directory (a truncated or corrupt newer one is skipped with a
//! warning naming it), and refuses one written by another job, naming what
//! differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::checkpoint::store::Store;
use crate::cluster::card::{self, Job};
use crate::error::{Error, Result};
use crate::spec::TrainSpec;
use crate::strategy::snapshot::Saved;
use crate::strategy::Strategy;

/// A checkpoint a job resumes from.
#[derive(Debug, Clone)]
pub struct Resume {
    /// What it holds.
    pub saved: Arc<Saved>,
    /// Its file.
    pub path: PathBuf,
    /// The BLAKE3 digest of its payload, hex (processes of a cluster
    /// compare it: they must all resume from the same checkpoint).
    pub digest: String,
}

/// The canonical JSON of a job description (what a checkpoint carries).
pub fn canonical(identity: &Value) -> Result<String> {
    let job =
        Job::new(identity).map_err(|e| Error::Internal(format!("cannot describe the job: {e}")))?;
    String::from_utf8(job.bytes)
        .map_err(|e| Error::Internal(format!("the job description is not UTF-8: {e}")))
}

/// The newest whole checkpoint in `dir` if it belongs to the job described
/// by `identity` (canonical JSON, see [`canonical`]; `labels` name its
/// keys in messages) and `strategy` can resume it on `workers` workers;
/// `None` if `dir` holds no whole checkpoint.
pub fn load(
    dir: &Path,
    identity: &str,
    labels: &BTreeMap<String, String>,
    strategy: &dyn Strategy,
    train: &TrainSpec,
    workers: usize,
) -> Result<Option<Resume>> {
    let store = Store::open(dir)?;
    let Some(loaded) = store.newest()? else {
        return Ok(None);
    };
    let path = loaded.path;
    let refuse = |message: String| Error::Checkpoint {
        path: path.clone(),
        message,
    };
    let saved = Saved::decode(&loaded.payload, &path)?;
    if saved.identity != identity {
        let parse = |text: &str| serde_json::from_str::<Value>(text).ok();
        let differences = match (parse(identity), parse(&saved.identity)) {
            (Some(here), Some(there)) => {
                card::summary(card::job_differences(&here, &there, labels))
            }
            _ => None,
        }
        .unwrap_or_else(|| "the job description".into());
        return Err(refuse(format!(
            "it was written by another job (\"there\" is the checkpoint): {differences}; resume with the pipeline and data that wrote it, or point output.checkpoint at another directory"
        )));
    }
    if saved.workers as usize != workers && !strategy.resumes_on_any_worker_count(train) {
        return Err(refuse(format!(
            "it was written by {} workers and {} resumes only on as many ({}); run with {} workers in all",
            saved.workers,
            strategy.name(),
            strategy.one_worker_count_reason(),
            saved.workers
        )));
    }
    if let Some((newer, why)) = loaded.skipped.first() {
        tracing::warn!(
            skipped = %newer.display(),
            resuming = %path.display(),
            "the newest checkpoint is not whole ({why}): resuming from an older one"
        );
    }
    let digest = blake3::hash(&loaded.payload).to_hex().to_string();
    Ok(Some(Resume {
        saved: Arc::new(saved),
        path,
        digest,
    }))
}
