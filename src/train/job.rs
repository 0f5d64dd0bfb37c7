//! What the processes of a cluster compare before they train together: the
//! resolved pipeline without its outputs and data paths (paths may differ
//! between machines), and, for every data file of the training and
//! validation sources in order, its size and a digest of its Parquet
//! footer (contents may not); and the digest of the model a warm start
//! begins from.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use serde_json::{json, Value};

use super::warm::InitModel;
use crate::cluster::JobDescription;
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::source::files::{ParquetFile, Source};

/// The trailer of a Parquet file: footer length (u32, little-endian) and `PAR1`.
const TRAILER: u64 = 8;

/// The job description of a plan (see the module docs). The data keys
/// `data.train` and `data.validation.files` hold one
/// `{ "size", "footer_blake3" }` per file, labelled with the local path.
pub fn describe(plan: &Plan, init: Option<&InitModel>) -> Result<JobDescription> {
    let mut identity = serde_json::to_value(&plan.pipeline)
        .map_err(|e| Error::Internal(format!("cannot describe the job: {e}")))?;
    let mut labels = BTreeMap::new();
    let train = fingerprints(&plan.train.files, "data.train", &mut labels)?;
    let validation = match &plan.validation_files {
        Some(v) => Some(json!({
            "files": fingerprints(&v.files, "data.validation.files", &mut labels)?
        })),
        None => None,
    };
    if let Value::Object(pipeline) = &mut identity {
        pipeline.shift_remove("output");
        // Where the gradients are folded does not change the model: a job
        // may resume with another `train.fold`.
        if let Some(Value::Object(train)) = pipeline.get_mut("train") {
            train.shift_remove("fold");
        }
        if let Some(init) = init {
            labels.insert("init_model".into(), init.path.display().to_string());
            pipeline.insert("init_model".into(), json!({ "blake3": init.digest }));
        }
        if let Some(Value::Object(data)) = pipeline.get_mut("data") {
            data.insert("train".into(), train);
            if let Some(v) = validation {
                data.insert("validation".into(), v);
            }
        }
    }
    Ok(JobDescription { identity, labels })
}

/// One `{ size, footer_blake3 }` per file of a source; `key[i]` is labelled
/// with file `i`'s path.
fn fingerprints(
    source: &Source,
    key: &str,
    labels: &mut BTreeMap<String, String>,
) -> Result<Value> {
    let mut out = Vec::with_capacity(source.files.len());
    for (i, file) in source.files.iter().enumerate() {
        labels.insert(format!("{key}[{i}]"), file.path.display().to_string());
        out.push(fingerprint(file)?);
    }
    Ok(Value::Array(out))
}

/// The size of a Parquet file and the BLAKE3 digest of its footer bytes.
fn fingerprint(file: &ParquetFile) -> Result<Value> {
    let path = &file.path;
    let io = |e| Error::io(path, e);
    let mut f = File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let bad = |what: &str| Error::parquet(path, what);
    if size < TRAILER {
        return Err(bad("too short for a Parquet footer"));
    }
    let mut trailer = [0u8; TRAILER as usize];
    f.seek(SeekFrom::Start(size - TRAILER)).map_err(io)?;
    f.read_exact(&mut trailer).map_err(io)?;
    let mut length = [0u8; 4];
    length.copy_from_slice(&trailer[..4]);
    let length = u64::from(u32::from_le_bytes(length));
    if &trailer[4..] != b"PAR1" || length > size - TRAILER {
        return Err(bad("the footer is not where its trailer says"));
    }
    let mut hasher = blake3::Hasher::new();
    f.seek(SeekFrom::Start(size - TRAILER - length))
        .map_err(io)?;
    std::io::copy(&mut (&mut f).take(length + TRAILER), &mut hasher).map_err(io)?;
    Ok(json!({
        "size": size,
        "footer_blake3": hasher.finalize().to_hex().as_str(),
    }))
}
